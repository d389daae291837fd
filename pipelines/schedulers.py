"""Noise schedules and samplers: DDIM with SD1.5 settings (teacher) and PeRFlow (student).

SD1.5 schedule (DESIGN §4): ``scaled_linear`` β from 0.00085 to 0.012 over 1000 steps,
ε-prediction, ᾱ_i = ∏_{j≤i}(1 − β_j). DDIM (Song et al. 2021, Eq. 12 with η = 0) as
diffusers' ``DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1,
timestep_spacing="leading")``: 25 steps are 961, 921, …, 1 and the last step lands on ᾱ_0.
The PeRFlow math itself lives in `pipelines.fada_math`; this module only drives it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipelines import fada_math
from pipelines.errors import UsageError

NUM_TRAIN_TIMESTEPS = fada_math.NUM_TRAIN_TIMESTEPS
BETA_START, BETA_END = 0.00085, 0.012  # SD1.5 scaled_linear endpoints


def sd15_alphas_cumprod(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ᾱ of SD1.5, shape (1000,): β = linspace(√0.00085, √0.012, 1000)², ᾱ_i = ∏_{j≤i}(1 − β_j).

    Computed in float32 exactly as diffusers does (so values match its scheduler bit for
    bit), then cast to ``dtype``.
    """
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


def ddim_timesteps(num_steps: int = 25) -> list[int]:
    """DDIM timesteps, ``leading`` spacing + ``steps_offset=1``: 25 steps → 961, 921, …, 1."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= NUM_TRAIN_TIMESTEPS:
        raise UsageError(f"`steps` {num_steps!r} is not valid for DDIM; use an integer from 1 to 1000 (25 by default).")
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


def add_noise(z0, eps, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM forward process q(z_t | z_0): z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε, t a LongTensor (B,); z0's dtype."""
    a = alphas_cumprod.to(z0.device)[t.to(z0.device)]
    a = fada_math.per_sample(a, z0, schedule_dtype(z0))
    return (a**0.5 * z0 + (1 - a) ** 0.5 * eps).to(z0.dtype)


class DDIMSampler:
    """The teacher's sampler: ``num_steps`` DDIM steps (η = 0) over the SD1.5 schedule."""

    def __init__(self, num_steps: int = 25, alphas_cumprod: torch.Tensor | None = None):
        self.timesteps = ddim_timesteps(num_steps)  # network timesteps, noisiest first
        self.alphas_cumprod = sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self._on_device: torch.Tensor | None = None  # ᾱ on the latents' device, copied once

    def step(self, eps, z, i: int) -> torch.Tensor:
        """Advance z from ``timesteps[i]`` to ``timesteps[i + 1]`` (or ᾱ_0 after the last)."""
        t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else None
        if self._on_device is None or self._on_device.device != z.device:  # a step then reads ᾱ on the device:
            self._on_device = self.alphas_cumprod.to(z.device, non_blocking=True)  # no host-to-device copy per step
        return ddim_step(eps, z, self.timesteps[i], t_prev, self._on_device)


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
