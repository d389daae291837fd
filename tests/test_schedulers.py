"""DDIM and PeRFlow schedulers against diffusers and the analytic point-mass model."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from pipelines import fada_math
from pipelines.errors import UsageError
from pipelines.schedulers import (
    DDIMSampler,
    PeRFlowScheduler,
    add_noise,
    ddim_step,
    ddim_timesteps,
    sd15_alphas_cumprod,
    solve_window,
)


def _diffusers_ddim(num_steps: int = 25) -> DDIMScheduler:
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def _point_mass_eps(z0: torch.Tensor, ac: torch.Tensor):
    """Exact ε-prediction for data concentrated at z0: ε = (z − √ᾱ·z0)/√(1−ᾱ)."""

    def eps_fn(z, index):
        a = ac[index].reshape(-1, *([1] * (z.ndim - 1)))
        return (z - a.sqrt() * z0) / (1 - a).sqrt()

    return eps_fn


def test_alphas_cumprod_equal_diffusers():
    ac = sd15_alphas_cumprod()
    assert ac.shape == (1000,) and ac.dtype == torch.float64
    assert torch.equal(ac, _diffusers_ddim().alphas_cumprod.double())
    assert ac[0].item() == pytest.approx(0.99915, abs=1e-7)
    assert sd15_alphas_cumprod(torch.float32).dtype == torch.float32


@pytest.mark.parametrize("num_steps", [25, 10, 1])
def test_ddim_timesteps_equal_diffusers(num_steps):
    assert ddim_timesteps(num_steps) == _diffusers_ddim(num_steps).timesteps.tolist()


def test_ddim_timesteps_25_values():
    steps = ddim_timesteps(25)
    assert steps[:3] == [961, 921, 881] and steps[-1] == 1 and len(steps) == 25


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5])
def test_ddim_timesteps_invalid(bad):
    with pytest.raises(UsageError, match=str(bad)):
        ddim_timesteps(bad)


def test_ddim_sampler_equals_diffusers_step():
    generator = torch.Generator().manual_seed(0)
    reference = _diffusers_ddim(25)
    sampler = DDIMSampler(25)
    ac = sd15_alphas_cumprod(torch.float32)
    z = torch.randn(2, 4, 8, 8, generator=generator)
    for i, t in enumerate(sampler.timesteps):
        eps = torch.randn(z.shape, generator=generator)
        expected = reference.step(eps, t, z).prev_sample
        ours = sampler.step(eps, z, i)
        t_prev = sampler.timesteps[i + 1] if i + 1 < 25 else None
        assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)
        assert torch.allclose(ddim_step(eps, z, t, t_prev, ac), expected, atol=1e-5, rtol=1e-5)
        z = expected


def test_add_noise_equals_diffusers():
    generator = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)
    t = torch.tensor([0, 500, 999])
    expected = _diffusers_ddim().add_noise(z0, eps, t)
    assert torch.allclose(add_noise(z0, eps, t, sd15_alphas_cumprod()), expected, atol=1e-6)


def test_perflow_scheduler_six_steps():
    scheduler = PeRFlowScheduler(6, K=4)
    assert scheduler.timesteps == [1000.0, 875.0, 750.0, 625.0, 500.0, 250.0]
    assert scheduler.times == [1.0, 0.875, 0.75, 0.625, 0.5, 0.25]


@pytest.mark.parametrize(
    ("num_steps", "expected"),
    [
        (4, [1000.0, 750.0, 500.0, 250.0]),
        (5, [1000.0, 875.0, 750.0, 500.0, 250.0]),
        (8, [1000.0, 875.0, 750.0, 625.0, 500.0, 375.0, 250.0, 125.0]),
    ],
)
def test_perflow_scheduler_step_counts(num_steps, expected):
    assert PeRFlowScheduler(num_steps).timesteps == expected


@pytest.mark.parametrize("bad", [0, -1, 3, 2.0])
def test_perflow_scheduler_invalid_steps(bad):
    with pytest.raises(UsageError, match="`steps`"):
        PeRFlowScheduler(bad)


def test_solve_window_point_mass_hits_true_endpoint():
    """The analytic teacher keeps ε fixed, so the window solve lands on √a_e·z0 + √(1−a_e)·ε."""
    generator = torch.Generator().manual_seed(2)
    ac = sd15_alphas_cumprod()
    z0 = torch.randn(1, 3, 4, 4, generator=generator, dtype=torch.float64).expand(4, -1, -1, -1)
    eps = torch.randn(4, 3, 4, 4, generator=generator, dtype=torch.float64)
    k = torch.tensor([4, 3, 2, 1])
    idx = fada_math.window_solver_indices(k, 10)
    z_start = add_noise(z0, eps, idx[:, 0], ac)
    calls = []
    eps_fn = _point_mass_eps(z0, ac)
    z_end = solve_window(lambda z, i: calls.append(i) or eps_fn(z, i), z_start, k, 10, ac)
    assert len(calls) == 10 and calls[0].tolist() == [999, 749, 499, 249]
    assert torch.allclose(z_end, add_noise(z0, eps, idx[:, -1], ac), atol=1e-10)
    target = fada_math.perflow_eps_target(z_start, z_end, ac, k)
    assert torch.allclose(target, eps, atol=1e-9)


def test_perflow_sampler_point_mass_lands_on_data():
    """6 PeRFlow steps with the analytic student reach the t = 0 state of the data point."""
    generator = torch.Generator().manual_seed(3)
    ac = sd15_alphas_cumprod()
    z0 = torch.randn(1, 2, 4, 4, generator=generator, dtype=torch.float64)
    z = torch.randn(1, 2, 4, 4, generator=generator, dtype=torch.float64)  # pure N(0, I)
    a_T = ac[999]
    eps_true = (z - a_T.sqrt() * z0) / (1 - a_T).sqrt()  # noise the start point carries

    def student(z_t, t):  # optimal student: the ε with z_t on the window's line (Eq. 3)
        k = fada_math.window_of(t)
        lam, eta = fada_math.window_lambda_eta(ac, k)
        a_s = ac[fada_math.boundary_index(k / 4)]
        r = k - 4 * t
        scale = (1 - r) + r * lam
        return (z_t - scale * a_s.sqrt() * z0) / (scale * (1 - a_s).sqrt() + r * eta)

    scheduler = PeRFlowScheduler(6)
    for i, t in enumerate(scheduler.times):
        z = scheduler.step(student(z, t), z, i)
    expected = ac[0].sqrt() * z0 + (1 - ac[0]).sqrt() * eps_true  # ᾱ_0 level, as DDIM's last step
    assert torch.allclose(z, expected, atol=1e-6)
    x0_pred = (z - (1 - ac[0]).sqrt() * eps_true) / ac[0].sqrt()
    assert torch.allclose(x0_pred, z0, atol=1e-6)
