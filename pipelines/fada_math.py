"""The paper's math (FADA, arXiv 2412.16915, Eqs. 2-10), exactly as DESIGN §4 states it.

Torch only, no I/O. Every function accepts floats or tensors and keeps float64 inputs in
float64. Conventions (PeRFlow reference code, K windows):

- continuous time t in [0, 1], t = 1 is pure noise; window k (k = 1..K) is [t_k, t_{k-1})
  with t_k = k / K, read from the noisy side: it holds its start t_k, not its end t_{k-1};
- ᾱ index of a window boundary t: ``max(1000·t − 1, 0)`` (`boundary_index`);
- timestep given to the student network: ``1000·t`` as a float;
- teacher DDIM points inside a window: ``t_j = t_k + j·(t_{k−1} − t_k)/n``, ᾱ index
  ``round(1000·t_j − 1)`` (`window_solver_indices`).

Per-sample values (``k``, ``t``, CFG scales of shape ``(B,)``) broadcast over the trailing
dimensions of latents ``(B, ...)``.
"""

from __future__ import annotations

import math

import torch

from pipelines.errors import UsageError

Number = float | int | torch.Tensor
NUM_TRAIN_TIMESTEPS = 1000  # SD1.5 schedule length; t = 1 ↔ network timestep 1000
_WINDOW_TOL = 1e-6  # t within this of a boundary counts as the boundary (float32 round-off)


def exact_dtype(where: torch.Tensor | torch.device) -> torch.dtype:
    """float64 on devices that have it (not MPS), else float32: the dtype for time arithmetic.

    ``where``: a tensor (its device) or a device.
    """
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return torch.float32 if device.type == "mps" else torch.float64


def per_sample(x: Number, like: torch.Tensor, dtype: torch.dtype | None = None) -> Number:
    """Reshape a per-sample tensor ``(B,)`` to ``(B, 1, …, 1)`` on ``like``'s device, in ``dtype``
    (default ``like``'s dtype)."""
    if not isinstance(x, torch.Tensor) or x.ndim == 0:
        return x
    return x.to(like.device, dtype or like.dtype).reshape(x.shape + (1,) * (like.ndim - x.ndim))


# --- classifier-free guidance -------------------------------------------------------------


def multi_cfg(eps_a, eps_r, eps_b, cfg_a: Number, cfg_r: Number) -> torch.Tensor:
    """Multi-CFG (Eq. 9): ε_cfg = cfg_a·(ε_a − ε_r) + cfg_r·(ε_r − ε_b) + ε_b.

    ``eps_*``: ``(B, ...)`` predictions with both conditions (a), the reference only (r) and
    neither (b). ``cfg_a``/``cfg_r``: floats or per-sample ``(B,)`` tensors.
    """
    cfg_a, cfg_r = per_sample(cfg_a, eps_a), per_sample(cfg_r, eps_a)
    return cfg_a * (eps_a - eps_r) + cfg_r * (eps_r - eps_b) + eps_b


def cfg_embedding(g_a, g_r, g_b, cfg_a: Number, cfg_r: Number) -> torch.Tensor:
    """CFG embedding (Eq. 10): Emb_cfg = cfg_a·(γ_a − γ_r) + cfg_r·(γ_r − γ_b) + γ_b.

    ``g_*``: learnable token sets ``(n_tokens, width)``. Float scales give
    ``(n_tokens, width)``; per-sample ``(B,)`` scales give ``(B, n_tokens, width)``.
    """

    def scale(c: Number) -> Number:
        if not isinstance(c, torch.Tensor) or c.ndim == 0:
            return c
        return c.to(g_a.device, g_a.dtype).reshape(c.shape + (1,) * g_a.ndim)

    return scale(cfg_a) * (g_a - g_r) + scale(cfg_r) * (g_r - g_b) + g_b


# --- adaptive mixed supervision --------------------------------------------------------------


def adaptive_weight(R: Number, w0: float = 0.2, s: float = 0.25, r_peak: float = 30.0, r_dead: float = 100.0) -> Number:
    """Adaptive ground-truth weight W(R) (Eq. 8), R = L_GT / L_distill per sample.

    W = W0·R^s on [0, Rp); W0·Rp^s·(Rd − R)/(Rd − Rp) on [Rp, Rd); 0 on [Rd, ∞).
    Defaults W0 = 0.2, s = 0.25, Rp = 30, Rd = 100 (peak 0.4681 at Rp). A float in gives
    a float out; a tensor gives a tensor of the same shape (no gradient).
    """
    if not isinstance(R, torch.Tensor):
        return float(adaptive_weight(torch.tensor(float(R), dtype=torch.float64), w0, s, r_peak, r_dead))
    R = R.detach().clamp_min(0)
    rising = w0 * R.pow(s)
    falling = w0 * r_peak**s * (r_dead - R) / (r_dead - r_peak)
    return torch.where(R < r_peak, rising, torch.where(R < r_dead, falling, torch.zeros_like(R)))


def parse_gt_weight(mode: str) -> tuple[str, float | None]:
    """Validate a ``--gt-weight`` mode: ``adaptive``, ``adaptive-unlimited`` or ``fixed-X``.

    Returns ``(kind, X)``; raises `UsageError` on anything else.
    """
    if mode in ("adaptive", "adaptive-unlimited"):
        return mode, None
    if mode.startswith("fixed-"):
        try:
            value = float(mode.removeprefix("fixed-"))
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return "fixed", value
    raise UsageError(
        f"`gt_weight` {mode!r} is not valid; use adaptive, adaptive-unlimited or fixed-X "
        "with X a number >= 0 (e.g. fixed-0.2)."
    )


def supervision_weight(R: Number, mode: str = "adaptive", w0: float = 0.2, s: float = 0.25) -> Number:
    """Ground-truth weight W of L_total = L_distill + W·L_GT (Eq. 7) for an ablation mode.

    ``adaptive``: Eq. 8 (`adaptive_weight`); ``adaptive-unlimited``: W0·R^s with no
    thresholds; ``fixed-X``: the constant X. Same kind (float/tensor) and shape as ``R``.
    """
    kind, value = parse_gt_weight(mode)
    if kind == "adaptive":
        return adaptive_weight(R, w0=w0, s=s)
    as_tensor = R if isinstance(R, torch.Tensor) else torch.tensor(float(R), dtype=torch.float64)
    as_tensor = as_tensor.detach()
    if kind == "fixed":
        weight = torch.full_like(as_tensor, value)
    else:
        weight = w0 * as_tensor.clamp_min(0).pow(s)
    return weight if isinstance(R, torch.Tensor) else float(weight)


# --- PeRFlow time windows ---------------------------------------------------------------------


def window_of(t: Number, K: int = 4) -> Number:
    """Window k of time t (Eqs. 2-5): k = 1..K with t ∈ [t_k, t_{k−1}), t_k = k/K.

    Windows are read from the noisy side and hold their start: t = 1 → K, t = 0.75 → 3
    (K = 4), t = 0.25 → 1, t = 0.001 → 1. Equals ceil(K·t) clamped to [1, K]. Float → int;
    tensor → long tensor of the same shape.
    """
    if not isinstance(t, torch.Tensor):
        return int(window_of(torch.tensor(float(t), dtype=torch.float64), K))
    k = torch.ceil(t.to(exact_dtype(t)) * K - _WINDOW_TOL)
    return k.clamp(1, K).long()


def boundary_index(t: Number) -> Number:
    """ᾱ index of a window boundary t: max(1000·t − 1, 0) → 999, 749, 499, 249, 0 (DESIGN §4).

    t = 0 maps to ᾱ_0 = 0.99915, not 1 (``set_alpha_to_one=False``). Float → int; tensor →
    long tensor.
    """
    if not isinstance(t, torch.Tensor):
        return max(round(NUM_TRAIN_TIMESTEPS * float(t) - 1), 0)
    return torch.round(t.to(exact_dtype(t)) * NUM_TRAIN_TIMESTEPS - 1).clamp_min(0).long()


def window_solver_indices(k: Number, n: int, K: int = 4) -> torch.Tensor:
    """ᾱ indices of the teacher's n-step DDIM solve across window k (Eq. 2).

    Points t_j = t_k + j·(t_{k−1} − t_k)/n, j = 0..n, index round(1000·t_j − 1), the last
    one clamped to 0 at t = 0 (as `boundary_index`). Returns ``(n + 1,)`` for an int k and
    ``(B, n + 1)`` for a ``(B,)`` tensor k; raises `UsageError` unless 1000/(K·n) is an
    integer (e.g. n ∈ {5, 10, 25} for K = 4).
    """
    if n < 1 or NUM_TRAIN_TIMESTEPS % (K * n) != 0:
        raise UsageError(
            f"`solver_steps` {n} does not divide a window of {NUM_TRAIN_TIMESTEPS // K} "
            f"timesteps (K={K}); pick n with 1000/(K·n) an integer, e.g. 5, 10 or 25."
        )
    stride = NUM_TRAIN_TIMESTEPS // (K * n)  # ᾱ indices per solver step
    k_t = torch.as_tensor(k).long()
    j = torch.arange(n + 1, device=k_t.device)  # on k's device: k lives on the model's during distillation
    start = k_t.unsqueeze(-1) * (NUM_TRAIN_TIMESTEPS // K)  # 1000·t_k
    return (start - j * stride - 1).clamp_min(0)


def _window_alphas(alphas_cumprod: torch.Tensor, k: Number, K: int):
    """(a_s, a_e) = ᾱ at the start t_k and the end t_{k−1} of window k."""
    k_t = torch.as_tensor(k, device=alphas_cumprod.device).long()
    a_s = alphas_cumprod[boundary_index(k_t / K)]
    a_e = alphas_cumprod[boundary_index((k_t - 1) / K)]
    return a_s, a_e


def window_lambda_eta(alphas_cumprod: torch.Tensor, k: Number, K: int = 4):
    """λ_k, η_k of window k (Eq. 4): λ = √(a_e/a_s), η = √(1−a_e) − √(a_e/a_s)·√(1−a_s).

    a_s, a_e are ᾱ at the window's start and end (`boundary_index`); η < 0. For SD1.5,
    k = 4..1: λ = 3.4858, 2.2145, 1.5596, 1.2163; η = −2.5064, −1.3009, −0.7558, −0.6638.
    Returns tensors shaped like ``k`` in the dtype of ``alphas_cumprod``.
    """
    a_s, a_e = _window_alphas(alphas_cumprod, k, K)
    lam = torch.sqrt(a_e / a_s)
    eta = torch.sqrt(1 - a_e) - lam * torch.sqrt(1 - a_s)
    return lam, eta


def perflow_student_input(z_start, z_end, t: Number, k: Number, K: int = 4) -> torch.Tensor:
    """Student input on the window's straight line (corrected Eq. 3).

    ẑ_t = z_s + (t − t_k)/(t_{k−1} − t_k)·(ẑ_e − z_s) = z_s + (k − K·t)·(ẑ_e − z_s).
    ``t``, ``k``: floats or per-sample ``(B,)`` tensors; ``z_*``: ``(B, ...)``.
    """
    dtype, device = exact_dtype(z_start), z_start.device
    r = torch.as_tensor(k, dtype=dtype, device=device) - K * torch.as_tensor(t, dtype=dtype, device=device)
    r = per_sample(r, z_start)
    return z_start + r * (z_end - z_start)


def perflow_eps_target(z_start, z_end, alphas_cumprod: torch.Tensor, k: Number, K: int = 4):
    """PeRFlow ε target (Eq. 4): ε̂ = (ẑ_e − λ_k·z_s)/η_k, constant within window k.

    With the true endpoint z_e* = √a_e·z_0 + √(1−a_e)·ε (Eq. 6) it equals ε exactly.
    """
    lam, eta = window_lambda_eta(alphas_cumprod, k, K)
    lam, eta = per_sample(lam, z_start), per_sample(eta, z_start)
    return (z_end - lam * z_start) / eta


# --- PeRFlow inference -----------------------------------------------------------------------


def perflow_times(num_steps: int = 6, K: int = 4) -> list[float]:
    """Continuous times t of an N-step PeRFlow sampler over K windows (DESIGN §4, Inference).

    Each window gets N // K evenly spaced steps starting at its start t_k; the N % K windows
    nearest t = 1 get one more. 6 steps, K = 4: [1, .875, .75, .625, .5, .25]. Raises
    `UsageError` for N < K (a step may not cross a window).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < K or K < 1:
        raise UsageError(
            f"`steps` {num_steps!r} is not valid for {K} PeRFlow windows; use an integer >= {K} "
            "(6 for the paper's fast sampler)."
        )
    times = []
    for rank, k in enumerate(range(K, 0, -1)):  # noisiest window first
        m = num_steps // K + (1 if rank < num_steps % K else 0)
        times += [k / K - j / (K * m) for j in range(m)]
    return times


def perflow_timesteps(num_steps: int = 6, K: int = 4) -> list[float]:
    """Network timesteps 1000·t of the N-step PeRFlow sampler: [1000, 875, 750, 625, 500, 250]."""
    return [NUM_TRAIN_TIMESTEPS * t for t in perflow_times(num_steps, K)]


def perflow_step(eps, z, t_c: float, t_next: float, alphas_cumprod: torch.Tensor, K: int = 4):
    """One PeRFlow step from t_c to t_next inside the window (t_s, t_e) of t_c (Eqs. 3-4 inverted).

    r = (t_c − t_s)/(t_e − t_s); ẑ_e = (λ·z + (1−r)·η·ε)/((1−r) + r·λ);
    z_next = z + (t_next − t_c)/(t_e − t_c)·(ẑ_e − z). t in [0, 1]; t_next must lie in
    [t_e, t_c) (the window's end at most).
    """
    k = window_of(t_c, K)
    t_s, t_e = k / K, (k - 1) / K
    if not (t_e - _WINDOW_TOL <= t_next < t_c):
        raise UsageError(
            f"PeRFlow step from t={t_c} to t={t_next} leaves window [{t_s}, {t_e}); "
            "a step must end inside its window (use perflow_times for the step times)."
        )
    lam, eta = (v.item() for v in window_lambda_eta(alphas_cumprod, k, K))
    r = (t_c - t_s) / (t_e - t_s)
    z_end = (lam * z + (1 - r) * eta * eps) / ((1 - r) + r * lam)
    return z + (t_next - t_c) / (t_e - t_c) * (z_end - z)
