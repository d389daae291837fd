"""Host-device syncs of one training step and one sampling step, found without a GPU (issue 21).

A GPU runs ahead of the Python that feeds it until the host needs a value computed there
(``.item()``, ``.tolist()``, ``bool(t)``, a copy back to the CPU) or a host-to-device copy must wait
(``.to(device)`` without ``non_blocking``, ``torch.tensor(data, device=...)``): each such call stalls
the host until the GPU has caught up. Here the model's device is played by ``meta`` (as in
test_device_safety.py): `count_host_syncs` patches those calls, records every one made on (or to) a
non-CPU tensor with the line that made it, and answers a read of a meta tensor with zeros so that
the step runs on. CPU tensors — the drop flags, the CPU generator's draws, the samplers' ᾱ — are
the host's own and cost nothing.

`training_steps` and `sampling_steps` run the hot paths: a teacher step (forward, backward, clipping,
AdamW, EMA), a balanced and a fast distillation step, and one step of each sampler (teacher DDIM
with multi-CFG, balanced PeRFlow with multi-CFG, fast PeRFlow with CFG tokens). On a CUDA machine
`cuda_sync_errors` runs the same steps under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


def _placeholder(tensor: torch.Tensor, name: str):
    zeros = torch.zeros(tensor.shape, dtype=tensor.dtype)
    return {"item": lambda: zeros.reshape(-1)[0].item() if zeros.numel() else 0, "tolist": zeros.tolist,
            "__bool__": lambda: False, "__int__": lambda: 0, "__float__": lambda: 0.0, "__index__": lambda: 0,
            "numpy": zeros.numpy, "cpu": lambda: zeros}[name]()  # fmt: skip


def _site() -> str:
    """The innermost frame outside this file and torch: where the sync was asked for."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if path.name == Path(__file__).name or "/torch/" in frame.filename:
            continue
        try:
            where = path.resolve().relative_to(ROOT).as_posix()
        except ValueError:
            where = "/".join(path.parts[-2:])
        return f"{where}:{frame.lineno}"
    return "?"


@contextlib.contextmanager
def count_host_syncs():
    """Yield a `Counter` of (kind, call site) for every host read of, or blocking copy to, a non-CPU tensor."""
    calls: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in (*READS, "to")}
    factories = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def read(name):
        def patched(self, *args, **kwargs):
            if self.device.type == "cpu":
                return originals[name](self, *args, **kwargs)
            calls[(f".{name}()", _site())] += 1
            return _placeholder(self, name) if self.device.type == "meta" else originals[name](self, *args, **kwargs)

        return patched

    def to(self, *args, **kwargs):
        device, _dtype, non_blocking, _format = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type == "cpu" and self.device.type != "cpu":
            calls[(".to(cpu)", _site())] += 1
            if self.device.type == "meta":
                return _placeholder(self, "cpu").to(*args, **kwargs)
        elif device is not None and device.type != "cpu" and self.device.type == "cpu" and not non_blocking:
            calls[("blocking .to(device)", _site())] += 1
        return originals["to"](self, *args, **kwargs)

    def factory(name):
        def patched(data, *args, **kwargs):
            device = kwargs.get("device")
            on_host = not torch.is_tensor(data) or data.device.type == "cpu"
            if device is not None and torch.device(device).type != "cpu" and on_host:
                calls[(f"torch.{name}(data, device=...)", _site())] += 1
            return factories[name](data, *args, **kwargs)

        return patched

    try:
        for name in READS:
            setattr(torch.Tensor, name, read(name))
        torch.Tensor.to = to
        for name in factories:
            setattr(torch, name, factory(name))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        for name, original in factories.items():
            setattr(torch, name, original)


# --- the hot paths at tiny size ----------------------------------------------------------------------


def tiny_batch(config, b: int, device) -> dict:
    f, m, s = config.frames_per_clip, config.motion_frames, config.sample_size
    g = torch.Generator().manual_seed(0)
    batch = {
        "frames": torch.rand(b, f, 3, s, s, generator=g) * 2 - 1,
        "reference": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
        "motion": torch.rand(b, m, 3, s, s, generator=g) * 2 - 1,
        "audio_features": torch.randn(b, f, config.audio_window_size, config.audio_feature_dim, generator=g),
    }
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # as the loop moves its batches


def models(device):
    """A tiny teacher and its fast and balanced students on ``device`` (seed 0)."""
    from pipelines.distill import build_student_from_teacher
    from pipelines.model import FadaModel
    from pipelines.model_config import get_preset

    torch.manual_seed(0)
    teacher = FadaModel.from_config(get_preset("tiny"))
    fast = build_student_from_teacher(teacher, "tokens")
    balanced = build_student_from_teacher(teacher, "none")
    return teacher.to(device), fast.to(device), balanced.to(device)


def training_steps(device, steps=("teacher", "distill balanced", "distill fast")):
    """Yield None once the models are built, then the name of each training step after running it: loss,
    backward, clipping, AdamW, EMA."""
    from pipelines.distill import DistillConfig, distill_loss
    from pipelines.schedulers import sd15_alphas_cumprod
    from pipelines.train_teacher import TeacherTrainConfig, teacher_loss
    from pipelines.training import make_ema, update_ema

    teacher, fast, balanced = models(device)
    trained_teacher = models(device)[0]
    alphas = sd15_alphas_cumprod(torch.float32).to(device, non_blocking=True)
    batch = tiny_batch(teacher.config, 2, device)
    generator = torch.Generator().manual_seed(0)
    frozen = teacher.eval().requires_grad_(False)
    yield None
    for name in steps:
        if name == "teacher":
            trained = trained_teacher
            loss = teacher_loss(trained, batch, alphas, generator, TeacherTrainConfig(p_drop_both=0.5))
        else:
            mode = name.split()[-1]
            trained = fast if mode == "fast" else balanced
            config = DistillConfig(mode=mode, solver_steps=5, p_drop_both=0.5)
            loss, _record = distill_loss(trained, frozen, batch, alphas, generator, config)
        params = {n: p for n, p in trained.named_parameters() if p.requires_grad}
        ema = make_ema(params, 0.999)
        optimizer = torch.optim.AdamW(params.values(), lr=1e-4)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, params, 0.999)
        yield name


def sampling_steps(device):
    """Yield None once the models are built, then the name of each sampler after one guided step of it (ε, then
    the scheduler's update)."""
    from pipelines.generate import GenerateConfig, strategy_for

    teacher, fast, balanced = models(device)
    config = teacher.config
    reference_latent = tiny_batch(config, 1, device)["reference"]
    motion = reference_latent[:, None].expand(1, config.motion_frames, *reference_latent.shape[1:])
    audio = torch.randn(1, config.frames_per_clip, config.audio_window_size, config.audio_feature_dim)
    yield None
    for name, model, stage, mode in (("teacher DDIM", teacher, "teacher", "teacher"),
                                     ("balanced PeRFlow", balanced, "student", "balanced"),
                                     ("fast PeRFlow", fast, "student", "fast")):  # fmt: skip
        model.eval()
        strategy = strategy_for(stage, mode, Path("tiny"))
        scheduler = strategy.make_scheduler(strategy.default_steps)
        with torch.no_grad():
            reference = model.reference_features(reference_latent, motion)  # once per clip
            tokens = model.audio_tokens(audio.to(device, non_blocking=True))  # once per clip
            z = torch.randn(1, config.frames_per_clip, *reference_latent.shape[1:]).to(device, non_blocking=True)
            timestep = scheduler.timesteps[0]
            eps = strategy.guided_eps(model, z, timestep, tokens, reference, GenerateConfig(cfg_ref=2.0))
            scheduler.step(eps, z, 0)
        yield name


def count(device="meta") -> dict[str, Counter]:
    """Per training step and sampler: the `Counter` of its host syncs (models are built before counting)."""
    found = {}
    for steps in (training_steps(device), sampling_steps(device)):
        next(steps)  # the models, built before counting
        while True:
            with count_host_syncs() as calls:
                name = next(steps, None)
            if name is None:
                break
            found[name] = calls
    return found


def cuda_sync_errors() -> dict[str, str]:
    """On a CUDA device: each step run under ``set_sync_debug_mode("error")``; the first sync's error, or ''."""
    results = {}
    device = torch.device("cuda")
    for steps in (training_steps(device), sampling_steps(device)):
        next(steps)
        while True:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                name = next(steps, None)
                error = ""
            except RuntimeError as exc:
                name, error = "?", str(exc).splitlines()[0]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            if name is None:
                break
            results[name] = error
            if error:
                break
    return results


def format_counts(found: dict[str, Counter]) -> list[str]:
    lines = []
    for name, calls in found.items():
        lines.append(f"{name}: {sum(calls.values())}")
        lines += [f"    {n} × {kind} at {site}" for (kind, site), n in calls.most_common()]
    return lines


if __name__ == "__main__":
    print("\n".join(format_counts(count())))
    _ = np  # numpy is the placeholder of `.numpy()`
