"""Device and dtype safety of the sampling and distillation maths (issue 12, item 1).

This machine has no GPU, so the model's device is played by ``meta``: a tensor made on the CPU and
combined with a meta tensor raises ("Tensor on device cpu is not on the expected device meta"), as
one combined with a CUDA tensor does. Distillation once crashed at its first step on CUDA that way
(`window_solver_indices` built its arange on the CPU). A static check over `pipelines/` and
`filters/` lists every tensor factory called without ``device=``, so a new one has to be looked at.

The maths is chained here with every input on meta; the whole training and sampling steps run on
meta in test_host_syncs.py, which also checks that they never read a device value on the host (the
drop flags live on the CPU since issue 21).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pipelines import distill as distill_module
from pipelines import fada_math as fm
from pipelines.distill import DistillConfig, distill_loss
from pipelines.model import FadaModel
from pipelines.model_config import get_preset
from pipelines.schedulers import (
    DDIMSampler,
    PeRFlowScheduler,
    add_noise,
    ddim_step,
    sd15_alphas_cumprod,
    solve_window,
)

META = torch.device("meta")
ROOT = Path(__file__).resolve().parents[1]


def on_meta(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "meta" for t in tensors)


@pytest.fixture(scope="module")
def ac_meta() -> torch.Tensor:
    return sd15_alphas_cumprod(torch.float32).to(META)  # as distillation holds it: on the model's device


# --- the maths, every input on the model's device ------------------------------------------------


def test_fada_math_stays_on_the_model_device(ac_meta):
    b, K = 2, 4
    t = torch.tensor([0.9, 0.3], dtype=torch.float64).to(META)
    k = fm.window_of(t, K)
    assert on_meta(k) and k.dtype == torch.long
    index = fm.boundary_index(k / K)
    assert on_meta(index) and index.dtype == torch.long
    solver = fm.window_solver_indices(k, 10, K)  # the old CPU arange raised here
    assert on_meta(solver) and solver.shape == (b, 11)
    lam, eta = fm.window_lambda_eta(ac_meta, k, K)
    assert on_meta(lam, eta) and lam.shape == (b,)
    z_start = torch.empty(b, 4, 3, 8, 8, device=META)  # (B, F, C, h, w)
    z_end = torch.empty_like(z_start)
    x = fm.perflow_student_input(z_start, z_end, t, k, K)
    target = fm.perflow_eps_target(z_start, z_end, ac_meta, k, K)
    assert on_meta(x, target) and x.shape == target.shape == z_start.shape
    assert x.dtype == target.dtype == torch.float32
    cfg_a, cfg_r = torch.rand(b, dtype=torch.float64).to(META), torch.rand(b, dtype=torch.float64).to(META)
    guided = fm.multi_cfg(z_start, z_end, z_start, cfg_a, cfg_r)
    assert on_meta(guided) and guided.dtype == torch.float32
    g_a = torch.empty(4, 16, device=META)
    assert on_meta(fm.cfg_embedding(g_a, g_a, g_a, cfg_a, cfg_r))
    ratio = torch.empty(b, device=META)
    for mode in ("adaptive", "adaptive-unlimited", "fixed-0.2"):
        weight = fm.supervision_weight(ratio, mode)
        assert on_meta(weight) and weight.shape == (b,), mode


def test_schedulers_stay_on_the_model_device(ac_meta):
    z = torch.empty(2, 4, 3, 8, 8, device=META)
    eps = torch.empty_like(z)
    t = torch.tensor([999, 249]).to(META)
    assert on_meta(add_noise(z, eps, t, ac_meta))
    assert on_meta(add_noise(z, eps, torch.tensor([999, 249]), sd15_alphas_cumprod()))  # CPU schedule and t
    assert on_meta(ddim_step(eps, z, 961, 921, ac_meta), ddim_step(eps, z, 1, None, sd15_alphas_cumprod()))
    assert on_meta(DDIMSampler(4).step(eps, z, 3))  # the default ᾱ lives on the CPU
    assert on_meta(PeRFlowScheduler(6).step(eps, z, 0))

    seen = []

    def eps_fn(z_now, index):
        seen.append(index)
        return torch.empty_like(z_now)

    for k in (torch.tensor([4, 1]).to(META), 3):  # per-sample k on the model's device, or an int
        z_end = solve_window(eps_fn, z, k, 5, ac_meta)
        assert on_meta(z_end) and z_end.shape == z.shape
    assert len(seen) == 10 and on_meta(*seen) and all(i.shape == (2,) for i in seen)


def test_distillation_maths_chain_on_the_model_device(ac_meta):
    """Steps 2-5 of `distill_loss` (its data-dependent branches aside) with every tensor on meta."""
    b, K, device = 2, 4, META
    z0 = torch.empty(b, 4, 3, 8, 8, device=device)
    eps = torch.empty_like(z0)
    t = (torch.randint(1, 1001, (b,)).double() / 1000).to(device, fm.exact_dtype(device))
    k = fm.window_of(t, K)
    z_start = add_noise(z0, eps, fm.boundary_index(k / K), ac_meta)
    z_end_true = add_noise(z0, eps, fm.boundary_index((k - 1) / K), ac_meta)
    z_end = solve_window(lambda z, index: torch.empty_like(z), z_start, k, 5, ac_meta, K)
    x_distill = fm.perflow_student_input(z_start, z_end, t, k, K)
    target = fm.perflow_eps_target(z_start, z_end, ac_meta, k, K)
    x_gt = fm.perflow_student_input(z_start, z_end_true, t, k, K)
    loss_distill = (x_distill - target).pow(2).flatten(1).mean(1)
    loss_gt = (x_gt - eps).pow(2).flatten(1).mean(1)
    weight = fm.supervision_weight(loss_gt / loss_distill.clamp_min(1e-30), "adaptive")
    loss = (loss_distill + weight * loss_gt).mean()
    assert on_meta(z_start, z_end, x_distill, target, x_gt, loss) and loss.dtype == torch.float32


# --- dtypes --------------------------------------------------------------------------------------


def test_exact_dtype_has_no_float64_on_mps():
    assert fm.exact_dtype(torch.device("mps")) is torch.float32  # MPS has no float64
    assert fm.exact_dtype(torch.device("cpu")) is fm.exact_dtype(torch.empty(1, device=META)) is torch.float64


def test_distill_loss_keeps_time_in_the_device_exact_dtype(monkeypatch):
    """On MPS (no float64) `distill_loss` must not move its float64 draws of t and the CFG scales there.

    MPS is played by patching `exact_dtype` to float32 on this CPU run; before the fix, t stayed float64.
    """
    monkeypatch.setattr(distill_module.fada_math, "exact_dtype", lambda where: torch.float32)
    torch.manual_seed(0)
    config = get_preset("tiny")
    teacher = FadaModel.from_config(config).eval().requires_grad_(False)
    student = FadaModel.from_config(config)
    b, f, m, s = 1, config.frames_per_clip, config.motion_frames, config.sample_size
    batch = {
        "frames": torch.zeros(b, f, 3, s, s),
        "reference": torch.zeros(b, 3, s, s),
        "motion": torch.zeros(b, m, 3, s, s),
        "audio_features": torch.zeros(b, f, config.audio_window_size, config.audio_feature_dim),
    }
    generator = torch.Generator().manual_seed(1)
    loss, record = distill_loss(student, teacher, batch, sd15_alphas_cumprod(torch.float32), generator,
                                DistillConfig(mode="balanced", solver_steps=5))  # fmt: skip
    assert torch.isfinite(loss)
    assert record["t"].dtype == record["cfg_audio"].dtype == torch.float32


def test_ddim_in_half_precision_keeps_the_schedule_precise():
    """ᾱ_0 = 0.99915 rounds to 1.0 in bf16; DDIM on bf16 latents must still do its arithmetic in float32."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 2, 3, 4, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(z.shape, generator=generator, dtype=torch.float64)
    ac = sd15_alphas_cumprod()
    for t, t_prev in ((1, None), (41, 1)):  # the last DDIM steps, where ᾱ is nearest 1
        exact = ddim_step(eps, z, t, t_prev, ac)
        half = ddim_step(eps.bfloat16(), z.bfloat16(), t, t_prev, ac)
        assert half.dtype == torch.bfloat16
        assert torch.allclose(half.double(), exact, atol=0.05, rtol=0.02), (t, (half.double() - exact).abs().max())
    noisy = add_noise(z.bfloat16(), eps.bfloat16(), torch.tensor([0]), ac)
    assert noisy.dtype == torch.bfloat16
    assert torch.allclose(noisy.double(), add_noise(z, eps, torch.tensor([0]), ac), atol=0.05, rtol=0.02)


# --- static check: every tensor factory without device= is looked at ----------------------------

FACTORIES = {
    "arange", "zeros", "ones", "full", "empty", "eye", "linspace", "logspace", "tensor", "as_tensor",
    "from_numpy", "randn", "rand", "randint", "randperm", "normal", "hann_window", "Generator",
}  # fmt: skip

# (file, enclosing function, factory) → why the CPU is right there. Anything not listed must pass
# ``device=`` (or build from a tensor's ``new_*``/``*_like``), or be added here with its reason.
CPU_ON_PURPOSE = {
    # seeded draws on a CPU generator, moved with .to(device) right after: the same numbers on every device
    ("pipelines/training.py", "run_training_loop", "Generator"): "per-step CPU generator for the losses' draws",
    ("pipelines/distill.py", "distill_loss", "randint"): "t drawn on the CPU, then .to(device, exact dtype)",
    ("pipelines/distill.py", "distill_loss", "randn"): "ε drawn on the CPU, then .to(device)",
    ("pipelines/distill.py", "distill_loss", "zeros"): "no dropout in fast mode; .to(device) below",
    ("pipelines/distill.py", "_uniform", "rand"): "CFG scales drawn on the CPU; distill_loss moves them",
    ("pipelines/training.py", "sample_condition_dropout", "rand"): "drop flags drawn and kept on the host",
    # condition drop flags live on the host: what to run and the NFE count need no device sync
    ("pipelines/model.py", "host_flags", "as_tensor"): "the drop flags, on the host by design",
    ("pipelines/model.py", "FadaModel.condition_reference", "as_tensor"): "the drop flags, read on the host",
    ("pipelines/model.py", "FadaModel.denoise_multi_cfg", "tensor"): "the three branches' drop flags, on the host",
    ("pipelines/train_teacher.py", "teacher_loss", "randint"): "t on the CPU generator, then .to(device)",
    ("pipelines/train_teacher.py", "teacher_loss", "randn"): "ε on the CPU generator, then .to(device)",
    ("pipelines/pipeline.py", "FadaPipeline._clips", "Generator"): "seeded CPU generator: same video on any device",
    ("pipelines/pipeline.py", "FadaPipeline._clips.clip_frames", "randn"): "noise on the CPU generator, .to(device)",
    ("pipelines/pipeline.py", "FadaPipeline._clips", "from_numpy"): "the portrait; .to(device, dtype) on the next line",
    # parameter initialisation: modules are built on the CPU (or under `with torch.device(...)`) and moved whole
    ("pipelines/attention.py", "CfgConditioning.__init__", "randn"): "parameter init",
    ("pipelines/audio.py", "AudioProjection.__init__", "randn"): "parameter init",
    # numbers given as Python floats/ints: a CPU tensor only to compute a float or an int
    ("pipelines/fada_math.py", "adaptive_weight", "tensor"): "float in, float out",
    ("pipelines/fada_math.py", "supervision_weight", "tensor"): "float in, float out",
    ("pipelines/fada_math.py", "window_of", "tensor"): "float in, int out",
    ("pipelines/fada_math.py", "window_solver_indices", "as_tensor"): "keeps a tensor k on its device",
    ("pipelines/schedulers.py", "sd15_alphas_cumprod", "linspace"): "the schedule; callers move it",
    # audio features are computed on the CPU; the model moves them (`audio_tokens(x.to(device))`)
    ("pipelines/audio.py", "MelEncoder.__init__", "from_numpy"): "mel filterbank, used on the CPU",
    ("pipelines/audio.py", "MelEncoder.frame_features", "hann_window"): "CPU STFT of a CPU waveform",
    ("pipelines/audio.py", "frame_audio_features", "as_tensor"): "the waveform, CPU",
    ("pipelines/audio.py", "frame_audio_features", "arange"): "window index into CPU features",
    (
        "pipelines/audio.py",
        "AudioFeatureWindows.__init__",
        "as_tensor",
    ): "the waveform, CPU; windows move to the device",
    ("pipelines/audio.py", "AudioFeatureWindows.__call__", "arange"): "frame index, moved to the features' device",
    ("pipelines/audio.py", "Wav2Vec2Encoder.frame_features_window", "arange"): "resampling positions, moved",
    # data on the CPU: batches are moved to the device by the training loops
    ("pipelines/data.py", "WindowDataset.decode", "from_numpy"): "decoded video frames and audio, on the CPU",
    ("pipelines/data.py", "window_features", "from_numpy"): "frame index into CPU (or cached) features",
    ("pipelines/data.py", "", "tensor"): "the RGB→YIQ matrix of the identity augmentation, applied to CPU windows",
    ("pipelines/data.py", "identity_transform", "tensor"): "the hue rotation, applied to the CPU windows",
    ("pipelines/data.py", "identity_transform", "from_numpy"): "the channel permutation, applied to the CPU windows",
    ("pipelines/checkpoint.py", "pack_state.encode", "from_numpy"): "saved to safetensors from the CPU",
    # metric extractors: `Extractor._forward` moves its inputs to the extractor's device
    ("pipelines/metrics/extractors.py", "_inception_input", "from_numpy"): "moved by _forward",
    ("pipelines/metrics/extractors.py", "_i3d_input", "from_numpy"): "moved by _forward",
    ("pipelines/metrics/extractors.py", "_r3d_input", "from_numpy"): "moved by _forward",
    ("pipelines/metrics/extractors.py", "_expression_input", "from_numpy"): "moved by _forward",
    ("pipelines/metrics/extractors.py", "load_torchscript", "zeros"): "probe input, moved by _forward",
    # curation scorers load their networks on the CPU (map_location="cpu", device="cpu")
    ("pipelines/metrics/quality.py", "pyiqa_score", "from_numpy"): "pyiqa metric created on the CPU",
    ("pipelines/metrics/quality.py", "full_reference", "from_numpy"): "pyiqa PSNR/SSIM metrics created on the CPU",
    ("pipelines/metrics/lip_sync.py", "syncnet_scores", "from_numpy"): "SyncNet loaded on the CPU",
    # the hallo family (issue 20)
    ("pipelines/schedulers.py", "linear_alphas_cumprod", "linspace"): "the schedule; callers move it",
    ("pipelines/schedulers.py", "schedule_for", "linspace"): "the schedule; callers move it",
    ("pipelines/hallo_modules.py", "HalloAudioProjection.__init__", "zeros"): "buffer init, moved with the module",
    ("pipelines/hallo_modules.py", "sinusoidal_table", "arange"): "position table, a buffer moved with the module",
    ("pipelines/hallo_modules.py", "sinusoidal_table", "zeros"): "position table, a buffer moved with the module",
    ("pipelines/hallo.py", "import_hallo", "zeros"): "the import builds the teacher on the CPU, then saves it",
    ("pipelines/hallo_inputs.py", "masks_from_landmarks", "from_numpy"): "face inputs on the CPU; callers .to(device)",
    ("pipelines/hallo_inputs.py", "face_conditions", "from_numpy"): "face inputs on the CPU; callers .to(device)",
}


def cpu_factory_calls(path: Path) -> set[tuple[str, str, str]]:
    """(file, enclosing Class.function, factory) of each ``torch.<factory>(...)`` call without ``device=``."""
    found, scope = set(), []
    relative = path.relative_to(ROOT).as_posix()

    class Visitor(ast.NodeVisitor):
        def visit_scope(self, node):
            scope.append(node.name)
            self.generic_visit(node)
            scope.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_scope

        def visit_Call(self, node):
            func = node.func
            is_factory = isinstance(func, ast.Attribute) and func.attr in FACTORIES
            if is_factory and isinstance(func.value, ast.Name) and func.value.id == "torch":
                if not any(keyword.arg == "device" for keyword in node.keywords):
                    found.add((relative, ".".join(scope), func.attr))
            self.generic_visit(node)

    Visitor().visit(ast.parse(path.read_text(), filename=relative))
    return found


def test_every_cpu_tensor_factory_is_on_purpose():
    files = sorted([*(ROOT / "pipelines").rglob("*.py"), *(ROOT / "filters").rglob("*.py")])
    calls = set().union(*(cpu_factory_calls(path) for path in files))
    unexpected = sorted(calls - CPU_ON_PURPOSE.keys())
    assert not unexpected, (
        f"tensor factories without device= (they make CPU tensors): {unexpected}; pass device= (the model's, "
        "or that of the tensor they meet), or add them to CPU_ON_PURPOSE with the reason the CPU is right"
    )
    stale = sorted(CPU_ON_PURPOSE.keys() - calls)
    assert not stale, f"CPU_ON_PURPOSE lists calls that no longer exist: {stale}; remove them"
