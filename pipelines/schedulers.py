"""Noise schedules and samplers: DDIM with SD1.5 settings (teacher) and PeRFlow (student).

SD1.5 schedule (DESIGN §4): ``scaled_linear`` β from 0.00085 to 0.012 over 1000 steps,
ε-prediction, ᾱ_i = ∏_{j≤i}(1 − β_j). DDIM (Song et al. 2021, Eq. 12 with η = 0) as
diffusers' ``DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1,
timestep_spacing="leading")``: 25 steps are 961, 921, …, 1 and the last step lands on ᾱ_0.
The PeRFlow math itself lives in `pipelines.fada_math`; this module only drives it.

Other families' schedules are options of the model config (`schedule_for`, `DDIMSampler.for_model`):
Hallo's is ``linear`` β with zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules
and Sample Steps are Flawed", Algorithm 1: ᾱ_999 = 0), ``trailing`` spacing (40 steps: 999, 974,
…, 24), ``set_alpha_to_one=True`` and v-prediction (Salimans & Ho 2022: v = √ᾱ·ε − √(1−ᾱ)·z_0). A
v-prediction DDIM step takes the network's v itself (`ddim_step_v`, diffusers' formulas): at
ᾱ = 0 the input is pure noise and ε = z carries nothing of v. Everywhere else — CFG, PeRFlow,
distillation — the model's output is converted to ε (`v_to_eps`) with ᾱ floored at
`ALPHA_BAR_FLOOR` (`eps_alphas_cumprod`), which keeps λ_k = √(a_e/a_s) of the noisiest PeRFlow
window finite (docs/DESIGN.md §4). The SD1.5 defaults are unchanged, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipelines import fada_math
from pipelines.errors import UsageError

NUM_TRAIN_TIMESTEPS = fada_math.NUM_TRAIN_TIMESTEPS
BETA_START, BETA_END = 0.00085, 0.012  # SD1.5 scaled_linear endpoints (Hallo's linear schedule uses the same)
# ᾱ floor of the schedule ε lives on, for zero-SNR configs (docs/DESIGN.md §4). ᾱ_999 = 0 makes the PeRFlow
# window-4 start degenerate: λ_4 = √(a_e/a_s) = ∞ and ε = z, which carries nothing of v. With 1e-3 (Hallo's linear
# zero-SNR schedule: the 99 noisiest indices, 901–999), window 4 gets λ_4 = 3.656, η_4 = −2.661, close to SD1.5's
# 3.486/−2.506 that the paper's recipe was tuned on, with less signal left at its start (√ᾱ = 3.2 % against
# SD1.5's 6.8 %), and a v-prediction's ε = √ᾱ·v + √(1−ᾱ)·z keeps v at ≥ 3.2 % weight (float32 recovery of ẑ_0
# from ε loses ≲ 2.4e-7·|z|/√ᾱ ≈ 8e-6·|z|). The teacher's DDIM sampler does not use it (`ddim_step_v`).
ALPHA_BAR_FLOOR = 1e-3


def sd15_alphas_cumprod(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ᾱ of SD1.5, shape (1000,): β = linspace(√0.00085, √0.012, 1000)², ᾱ_i = ∏_{j≤i}(1 − β_j).

    Computed in float32 exactly as diffusers does (so values match its scheduler bit for
    bit), then cast to ``dtype``.
    """
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


def linear_alphas_cumprod(zero_terminal_snr: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ᾱ of the ``linear`` β schedule (β = linspace(0.00085, 0.012, 1000)), optionally rescaled to zero terminal SNR.

    Computed in float32 exactly as diffusers' ``DDIMScheduler(beta_schedule="linear",
    rescale_betas_zero_snr=...)`` does, then cast to ``dtype``.
    """
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    return _cumprod(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas).to(dtype)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """β rescaled so that ᾱ_T = 0 and ᾱ_0 is kept (Lin et al. 2024, Algorithm 1; diffusers' op order)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last  # shift: the last ᾱ becomes 0
    alphas_bar_sqrt *= first / (first - last)  # scale: the first ᾱ is kept
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def _cumprod(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas, dim=0)


def schedule_for(config, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ᾱ (1000,) of a model config's noise schedule (``beta_schedule``, ``zero_terminal_snr``).

    Any object with those attributes (a `ModelConfig`); the SD1.5 default is `sd15_alphas_cumprod`.
    """
    if config.beta_schedule == "scaled_linear" and not config.zero_terminal_snr:
        return sd15_alphas_cumprod(dtype)
    if config.beta_schedule == "scaled_linear":
        betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        return _cumprod(rescale_zero_terminal_snr(betas)).to(dtype)
    return linear_alphas_cumprod(config.zero_terminal_snr, dtype)


def eps_alphas_cumprod(config, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The schedule ε lives on: `schedule_for` with ᾱ floored at `ALPHA_BAR_FLOOR` (a no-op for SD1.5).

    `FadaModel.denoise` converts v → ε with it, and PeRFlow distillation and sampling use it for their
    windows, so λ_k, η_k and the targets of Eqs. 2–5 stay finite at a zero-SNR window start.
    """
    alphas_cumprod = schedule_for(config, dtype)
    return alphas_cumprod.clamp_min(ALPHA_BAR_FLOOR) if config.zero_terminal_snr else alphas_cumprod


def v_to_eps(v: torch.Tensor, z: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε from a v-prediction: ε = √ᾱ·v + √(1−ᾱ)·z (Salimans & Ho 2022), ᾱ per sample (B,) or a scalar.

    Computed in `schedule_dtype`, returned in v's dtype.
    """
    a = fada_math.per_sample(alpha_bar, z, schedule_dtype(z))
    return (a**0.5 * v + (1 - a) ** 0.5 * z).to(v.dtype)


def ddim_timesteps(num_steps: int = 25, spacing: str = "leading") -> list[int]:
    """DDIM timesteps, noisiest first.

    ``leading`` + ``steps_offset=1`` (SD1.5): 25 steps → 961, 921, …, 1; ``trailing`` (zero-SNR
    schedules): round(arange(1000, 0, −1000/N)) − 1, 40 steps → 999, 974, …, 24.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= NUM_TRAIN_TIMESTEPS:
        raise UsageError(f"`steps` {num_steps!r} is not valid for DDIM; use an integer from 1 to 1000 (25 by default).")
    if spacing == "trailing":
        ratio = NUM_TRAIN_TIMESTEPS / num_steps
        return [int(t) - 1 for t in np.round(np.arange(NUM_TRAIN_TIMESTEPS, 0, -ratio)).astype(np.int64)]
    stride = NUM_TRAIN_TIMESTEPS // num_steps
    return [i * stride + 1 for i in range(num_steps - 1, -1, -1)]


def schedule_dtype(z: torch.Tensor) -> torch.dtype:
    """The dtype for ᾱ arithmetic beside latents ``z``: at least float32.

    In bf16/fp16, ᾱ near 1 rounds to 1 (ᾱ_0 = 0.99915 → 1.0 in bf16), so √(1−ᾱ) would be 0.
    """
    return torch.promote_types(z.dtype, torch.float32)


def _ddim_update(eps, z, a_t, a_prev):
    """DDIM η = 0 update between noise levels ᾱ_t → ᾱ_prev (per-sample or scalar ᾱ).

    x̂_0 = (z − √(1−ᾱ_t)·ε)/√ᾱ_t;  z_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε. ᾱ stays in
    `schedule_dtype`; the result is in z's dtype.
    """
    a_t = fada_math.per_sample(a_t, z, schedule_dtype(z))
    a_prev = fada_math.per_sample(a_prev, z, schedule_dtype(z))
    x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return (a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps).to(z.dtype)


def ddim_step(eps, z, t: int, t_prev: int | None, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """One DDIM step (η = 0, no clipping) from timestep t to t_prev.

    ``t_prev=None`` is the final step, to ᾱ_0 (``set_alpha_to_one=False``). Equals
    diffusers' ``DDIMScheduler.step(...).prev_sample`` with the settings above.
    """
    a_t = alphas_cumprod[t].to(z.device, schedule_dtype(z))
    a_prev = alphas_cumprod[0 if t_prev is None else t_prev].to(z.device, schedule_dtype(z))
    return _ddim_update(eps, z, a_t, a_prev)


def ddim_step_v(v, z, t: int, t_prev: int, alphas_cumprod: torch.Tensor, final_alpha_cumprod=None) -> torch.Tensor:
    """One DDIM step (η = 0, no clipping) of a v-prediction model, diffusers' formulas and op order.

    x̂_0 = √ᾱ_t·z − √(1−ᾱ_t)·v, ε̂ = √ᾱ_t·v + √(1−ᾱ_t)·z, z_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε̂;
    well defined at ᾱ_t = 0 (zero terminal SNR). ``t_prev < 0`` steps to ``final_alpha_cumprod``
    (1 with ``set_alpha_to_one``, else ᾱ_0). Equals ``DDIMScheduler(prediction_type="v_prediction",
    …).step(...).prev_sample`` bit for bit for float32 inputs on the same device.
    """
    ac = alphas_cumprod.to(z.device, schedule_dtype(z))
    a_t = ac[t]
    if t_prev >= 0:
        a_prev = ac[t_prev]
    else:
        final = ac[0] if final_alpha_cumprod is None else final_alpha_cumprod
        a_prev = torch.as_tensor(final, dtype=ac.dtype, device=ac.device)
    b_t = 1 - a_t
    x0 = (a_t**0.5) * z - (b_t**0.5) * v
    eps = (a_t**0.5) * v + (b_t**0.5) * z
    return (a_prev**0.5 * x0 + (1 - a_prev) ** (0.5) * eps).to(z.dtype)


def add_noise(z0, eps, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM forward process q(z_t | z_0): z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε, t a LongTensor (B,); z0's dtype."""
    a = alphas_cumprod.to(z0.device)[t.to(z0.device)]
    a = fada_math.per_sample(a, z0, schedule_dtype(z0))
    return (a**0.5 * z0 + (1 - a) ** 0.5 * eps).to(z0.dtype)


def alpha_bar_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """ᾱ at network timesteps (B,) float: ᾱ[τ] at an integer τ (the teacher's DDPM/DDIM index), linear
    between neighbours at a fractional one (a student's 1000·t), τ clamped to [0, 999]."""
    index = timesteps.to(alphas_cumprod.device, alphas_cumprod.dtype).clamp(0, len(alphas_cumprod) - 1)
    low = index.floor().long()
    high = (low + 1).clamp(max=len(alphas_cumprod) - 1)
    return torch.lerp(alphas_cumprod[low], alphas_cumprod[high], index - low)


def eps_from_x0(z: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The ε that takes x0 to z at noise level ᾱ (per sample, (B,)): ε = (z − √ᾱ·x0)/√(1−ᾱ), the
    inverse of `add_noise` (DDPM, Ho et al. 2020, Eq. 4); in `schedule_dtype`."""
    a = fada_math.per_sample(alpha_bar, z, schedule_dtype(z))
    return (z - a**0.5 * x0) / (1 - a) ** 0.5


class DDIMSampler:
    """The teacher's sampler: ``num_steps`` DDIM steps (η = 0) over the SD1.5 schedule, or a model's own.

    ``prediction_type="v_prediction"``: `step` takes the network's v (`ddim_step_v`) and steps by
    diffusers' rule ``t − 1000 // N`` (to ``final_alpha_cumprod`` below 0); ``"epsilon"`` takes ε.
    """

    def __init__(
        self,
        num_steps: int = 25,
        alphas_cumprod: torch.Tensor | None = None,
        spacing: str = "leading",
        prediction_type: str = "epsilon",
        final_alpha_cumprod: float | None = None,
    ):
        self.timesteps = ddim_timesteps(num_steps, spacing)  # network timesteps, noisiest first
        self.alphas_cumprod = sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.prediction_type = prediction_type  # what `step` takes: ε, or the network's v
        self.final_alpha_cumprod = final_alpha_cumprod  # ᾱ after the last v step; None = ᾱ_0
        self.stride = NUM_TRAIN_TIMESTEPS // num_steps
        self._on_device: torch.Tensor | None = None  # ᾱ on the latents' device, copied once

    @classmethod
    def for_model(cls, config, num_steps: int) -> DDIMSampler:
        """The DDIM sampler a model config asks for (schedule, spacing, prediction type, final ᾱ)."""
        return cls(
            num_steps,
            schedule_for(config),
            config.timestep_spacing,
            config.prediction_type,
            1.0 if config.set_alpha_to_one else None,
        )

    def step(self, model_output, z, i: int) -> torch.Tensor:
        """Advance z from ``timesteps[i]`` to ``timesteps[i + 1]`` (or the final ᾱ after the last)."""
        if self.prediction_type == "v_prediction":
            t = self.timesteps[i]
            return ddim_step_v(model_output, z, t, t - self.stride, self.alphas_cumprod, self.final_alpha_cumprod)
        t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else None
        if self._on_device is None or self._on_device.device != z.device:  # a step then reads ᾱ on the device:
            self._on_device = self.alphas_cumprod.to(z.device, non_blocking=True)  # no host-to-device copy per step
        return ddim_step(model_output, z, self.timesteps[i], t_prev, self._on_device)


class PeRFlowScheduler:
    """The student's sampler: N PeRFlow steps over K windows (DESIGN §4 Inference, Eqs. 3-4).

    ``timesteps`` are the network timesteps 1000·t (floats), e.g. 6 steps, K = 4:
    [1000, 875, 750, 625, 500, 250]; start from pure N(0, I). Any N >= K is valid;
    `UsageError` otherwise.
    """

    def __init__(self, num_steps: int = 6, K: int = 4, alphas_cumprod: torch.Tensor | None = None):
        self.K = K
        self.times = fada_math.perflow_times(num_steps, K)  # continuous t, 1 first
        self.timesteps = fada_math.perflow_timesteps(num_steps, K)  # network timesteps 1000·t
        self.alphas_cumprod = sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod

    def step(self, eps, z, i: int) -> torch.Tensor:
        """Advance z from ``times[i]`` to ``times[i + 1]`` (to t = 0 after the last step)."""
        t_next = self.times[i + 1] if i + 1 < len(self.times) else 0.0
        return fada_math.perflow_step(eps, z, self.times[i], t_next, self.alphas_cumprod, self.K)


def solve_window(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z_start: torch.Tensor,
    k: int | torch.Tensor,
    n: int,
    alphas_cumprod: torch.Tensor,
    K: int = 4,
) -> torch.Tensor:
    """Teacher solve ẑ_{t_{k−1}} = Φ(z_{t_k}, t_k, t_{k−1}) (Eq. 2): n DDIM steps across window k.

    Uses `fada_math.window_solver_indices`; calls ``eps_fn(z, index)`` with ``index`` the
    ᾱ index as a LongTensor (B,) (the teacher's DDPM timestep). ``k`` is an int or a
    per-sample LongTensor (B,); ``z_start``: (B, ...). Runs without gradient.
    """
    batch = z_start.shape[0]
    idx = fada_math.window_solver_indices(k, n, K).to(z_start.device)  # (n+1,) or (B, n+1)
    idx = idx.expand(batch, n + 1)  # (B, n+1)
    ac = alphas_cumprod.to(z_start.device)
    z = z_start
    with torch.no_grad():
        for j in range(n):
            eps = eps_fn(z, idx[:, j])
            z = _ddim_update(eps, z, ac[idx[:, j]], ac[idx[:, j + 1]])
    return z
