"""The paper's math (DESIGN §4) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines import fada_math as fm
from pipelines.errors import UsageError
from pipelines.schedulers import sd15_alphas_cumprod


@pytest.fixture(scope="module")
def ac() -> torch.Tensor:
    return sd15_alphas_cumprod()


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- Eq. 9 / Eq. 10 ---------------------------------------------------------------------------


def test_multi_cfg_values():
    eps_a, eps_r, eps_b = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([0.5])
    # 6.5·(3 − 2) + 2.5·(2 − 0.5) + 0.5 = 10.75
    assert fm.multi_cfg(eps_a, eps_r, eps_b, 6.5, 2.5).item() == pytest.approx(10.75)
    assert torch.equal(fm.multi_cfg(eps_a, eps_r, eps_b, 1.0, 1.0), eps_a)
    assert torch.equal(fm.multi_cfg(eps_a, eps_r, eps_b, 0.0, 0.0), eps_b)


def test_multi_cfg_per_sample_scales():
    eps_a, eps_r, eps_b = _randn(2, 3, 4, 4, seed=1), _randn(2, 3, 4, 4, seed=2), _randn(2, 3, 4, 4, seed=3)
    cfg_a, cfg_r = torch.tensor([1.0, 6.5], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = fm.multi_cfg(eps_a, eps_r, eps_b, cfg_a, cfg_r)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float64
    assert torch.allclose(out[0], eps_a[0])
    assert torch.allclose(out[1], fm.multi_cfg(eps_a[1], eps_r[1], eps_b[1], 6.5, 2.0))


def test_cfg_embedding_float_and_per_sample():
    g_a, g_r, g_b = _randn(4, 8, seed=4), _randn(4, 8, seed=5), _randn(4, 8, seed=6)
    single = fm.cfg_embedding(g_a, g_r, g_b, 1.0, 1.0)
    assert single.shape == (4, 8) and torch.allclose(single, g_a)
    assert torch.allclose(fm.cfg_embedding(g_a, g_r, g_b, 0.0, 1.0), g_r)
    assert torch.allclose(fm.cfg_embedding(g_a, g_r, g_b, 0.0, 0.0), g_b)
    scales_a = torch.tensor([1.0, 6.5, 10.0], dtype=torch.float64)
    scales_r = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    batch = fm.cfg_embedding(g_a, g_r, g_b, scales_a, scales_r)
    assert batch.shape == (3, 4, 8)
    assert torch.allclose(batch[0], g_a)
    expected = 6.5 * (g_a - g_r) + 2.0 * (g_r - g_b) + g_b
    assert torch.allclose(batch[1], expected)


# --- Eqs. 7-8 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("R", "W"),
    [(0, 0.0), (1, 0.2), (16, 0.4), (30, 0.4681), (65, 0.2340), (100, 0.0), (250, 0.0)],
)
def test_adaptive_weight_values(R, W):
    value = fm.adaptive_weight(float(R))
    assert isinstance(value, float)
    assert value == pytest.approx(W, abs=5e-5)


def test_adaptive_weight_tensor():
    R = torch.tensor([0.0, 1.0, 16.0, 30.0, 65.0, 100.0, math.inf], dtype=torch.float64, requires_grad=True)
    W = fm.adaptive_weight(R)
    assert W.shape == R.shape and W.dtype == torch.float64 and not W.requires_grad
    expected = torch.tensor([0.0, 0.2, 0.4, 0.46807, 0.23403, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(W, expected, atol=1e-5)


def test_supervision_weight_modes():
    R = torch.tensor([1.0, 16.0, 200.0], dtype=torch.float64)
    assert torch.allclose(fm.supervision_weight(R, "adaptive"), fm.adaptive_weight(R))
    unlimited = fm.supervision_weight(R, "adaptive-unlimited")
    assert torch.allclose(unlimited, 0.2 * R**0.25)  # 200 → 0.752, no cut-off
    assert torch.equal(fm.supervision_weight(R, "fixed-0.3"), torch.full_like(R, 0.3))
    assert fm.supervision_weight(16.0, "fixed-0") == 0.0
    assert fm.supervision_weight(16.0, "adaptive-unlimited") == pytest.approx(0.4)


@pytest.mark.parametrize("bad", ["adaptve", "fixed-", "fixed-abc", "fixed--1", "fixed-nan"])
def test_supervision_weight_invalid_mode(bad):
    with pytest.raises(UsageError, match="`gt_weight`"):
        fm.supervision_weight(1.0, bad)


# --- windows and index maps -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "k"),
    [(1.0, 4), (0.999, 4), (0.7501, 4), (0.75, 3), (0.5, 2), (0.26, 2), (0.25, 1), (0.001, 1)],
)
def test_window_of_edges(t, k):
    assert fm.window_of(t) == k
    assert fm.window_of(torch.tensor([t], dtype=torch.float32)).tolist() == [k]


def test_window_of_tensor_and_k():
    t = torch.arange(1000, 0, -1) / 1000  # 1, 0.999, …, 0.001
    k = fm.window_of(t)
    assert k.dtype == torch.long
    assert [int((k == j).sum()) for j in (4, 3, 2, 1)] == [250, 250, 250, 250]
    assert fm.window_of(0.5, K=2) == 1 and fm.window_of(0.51, K=2) == 2


def test_boundary_index():
    assert [fm.boundary_index(t) for t in (1.0, 0.75, 0.5, 0.25, 0.0)] == [999, 749, 499, 249, 0]
    assert fm.boundary_index(torch.tensor([1.0, 0.0])).tolist() == [999, 0]


def test_window_solver_indices():
    assert fm.window_solver_indices(4, 5).tolist() == [999, 949, 899, 849, 799, 749]
    assert fm.window_solver_indices(1, 5).tolist() == [249, 199, 149, 99, 49, 0]
    batch = fm.window_solver_indices(torch.tensor([3, 2]), 25)
    assert batch.shape == (2, 26) and batch[0, 1].item() == 739 and batch[1, -1].item() == 249
    with pytest.raises(UsageError, match="`solver_steps` 7"):
        fm.window_solver_indices(4, 7)
    # k on the model's device (meta stands in for cuda here): the indices follow it, as
    # distillation needs (a CPU arange combined with a CUDA k crashed its first step)
    on_meta = fm.window_solver_indices(torch.tensor([3, 2], device="meta"), 25)
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 26)


def test_window_lambda_eta_sd15(ac):
    lam, eta = fm.window_lambda_eta(ac, torch.tensor([4, 3, 2, 1]))
    assert lam.dtype == torch.float64
    assert torch.allclose(lam, torch.tensor([3.4858, 2.2145, 1.5596, 1.2163], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(eta, torch.tensor([-2.5064, -1.3009, -0.7558, -0.6638], dtype=torch.float64), atol=1e-4)
    lam4, eta4 = fm.window_lambda_eta(ac, 4)
    assert lam4.item() == pytest.approx(3.4858, abs=1e-4) and eta4.item() < 0


# --- Eqs. 3, 4, 6 -----------------------------------------------------------------------------


def test_student_input_interpolates():
    z_s, z_e = _randn(3, 2, 4, 4, seed=7), _randn(3, 2, 4, 4, seed=8)
    t = torch.tensor([1.0, 0.625, 0.3])
    k = fm.window_of(t)  # 4, 3, 2
    z_t = fm.perflow_student_input(z_s, z_e, t, k)
    r = torch.tensor([0.0, 0.5, 0.8], dtype=torch.float64).reshape(3, 1, 1, 1)
    assert torch.allclose(z_t, z_s + r * (z_e - z_s), atol=1e-6)
    assert torch.equal(fm.perflow_student_input(z_s, z_e, 1.0, 4), z_s)


def test_ground_truth_pair_target_is_eps(ac):
    """Eq. 6: with z_e* = √a_e·z0 + √(1−a_e)·ε the Eq. 4 target equals ε exactly."""
    z0, eps = _randn(4, 3, 4, 4, seed=9), _randn(4, 3, 4, 4, seed=10)
    k = torch.tensor([4, 3, 2, 1])
    a_s = ac[fm.boundary_index(k / 4)].reshape(4, 1, 1, 1)
    a_e = ac[fm.boundary_index((k - 1) / 4)].reshape(4, 1, 1, 1)
    z_s = a_s.sqrt() * z0 + (1 - a_s).sqrt() * eps
    z_e = a_e.sqrt() * z0 + (1 - a_e).sqrt() * eps
    assert torch.allclose(fm.perflow_eps_target(z_s, z_e, ac, k), eps, atol=1e-10)
    assert torch.allclose(fm.perflow_eps_target(z_s[:1], z_e[:1], ac, 4), eps[:1], atol=1e-10)


# --- inference --------------------------------------------------------------------------------


def test_perflow_timesteps():
    assert fm.perflow_timesteps() == [1000.0, 875.0, 750.0, 625.0, 500.0, 250.0]
    assert fm.perflow_times(6) == [1.0, 0.875, 0.75, 0.625, 0.5, 0.25]
    assert len(fm.perflow_timesteps(25)) == 25 and fm.perflow_timesteps(25)[:2] == pytest.approx(
        [1000.0, 1000 - 250 / 7]
    )
    with pytest.raises(UsageError, match="`steps` 2"):
        fm.perflow_timesteps(2)


def test_perflow_step_inverts_student_input(ac):
    """A step to the window's end from any point on the line recovers ẑ_e exactly (Eqs. 3-4)."""
    z_s, eps = _randn(1, 2, 4, 4, seed=11), _randn(1, 2, 4, 4, seed=12)
    lam, eta = fm.window_lambda_eta(ac, 3)
    z_e = lam * z_s + eta * eps  # Eq. 4 solved for the end point
    for t_c in (0.75, 0.7, 0.6):
        z_t = fm.perflow_student_input(z_s, z_e, t_c, 3)
        assert torch.allclose(fm.perflow_step(eps, z_t, t_c, 0.5, ac), z_e, atol=1e-10)
    halfway = fm.perflow_step(eps, z_s, 0.75, 0.625, ac)
    assert torch.allclose(halfway, fm.perflow_student_input(z_s, z_e, 0.625, 3), atol=1e-10)
    with pytest.raises(UsageError, match="leaves window"):
        fm.perflow_step(eps, z_s, 0.75, 0.25, ac)


def test_latent_dtype_kept_with_float64_schedule(ac):
    z = _randn(2, 3, 4, seed=13).float()
    k, t = torch.tensor([4, 1]), torch.tensor([0.9, 0.1])
    assert fm.perflow_eps_target(z, z, ac, k).dtype == torch.float32
    assert fm.perflow_student_input(z.half(), z.half(), t, k).dtype == torch.float16
    assert fm.multi_cfg(z, z, z, torch.tensor([1.0, 2.0], dtype=torch.float64), 2.0).dtype == torch.float32
