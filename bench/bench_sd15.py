"""The sd15 preset on this CPU: one training step of each teacher stage, one distillation step per
mode and one generated clip per mode, at batch 1 — seconds and peak memory, fp32 and bf16, with and
without gradient checkpointing.

Nothing is downloaded: the script writes a Stable Diffusion 1.5 folder in diffusers layout (the
real `unet/config.json` and `vae/config.json` values of runwayml/stable-diffusion-v1-5, random
weights; ~3.7 GB) into a work folder, and every case loads it through the code users run
(`FadaModel.from_pretrained_sd`, `set_trainable`, `make_optimizer`, accelerate's autocast,
`teacher_loss` / `distill_loss`, `optimizer_step`; `generate` on saved checkpoints).

Each case runs in its own process with a data-size limit (`--limit-gb`, RLIMIT_DATA: private
memory of the process), so a case that needs more stops with an out-of-memory error and is reported
as "does not fit" instead of swapping the machine. Peak memory is the process's peak RSS; the
"tensors" column subtracts the process's RSS before the model was built (Python, torch, libraries),
which is the part a GPU would hold (plus its CUDA context, ~0.5 GB).

    python bench/bench_sd15.py --work /tmp/sd15 --keep            # all cases (hours on 2 cores)
    python bench/bench_sd15.py --work /tmp/sd15 --cases video-bf16-ckpt,gen-fast-bf16

Writes bench/results/sd15.{json,md} after every case (a killed run keeps what finished).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
if TYPE_CHECKING:
    from pipelines.model_config import ModelConfig

# runwayml/stable-diffusion-v1-5, unet/config.json and vae/config.json (diffusers layout), the values
# that set the architecture; the rest are diffusers' defaults.
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# name → (kind, options). Precision "bf16" = accelerate autocast (training) or bf16 weights (generation).
CASES: dict[str, tuple[str, dict]] = {
    "video-bf16-ckpt": ("teacher", {"stage": "video", "precision": "bf16", "ckpt": True}),
    "video-fp32-ckpt": ("teacher", {"stage": "video", "precision": "no", "ckpt": True}),
    "video-bf16": ("teacher", {"stage": "video", "precision": "bf16", "ckpt": False}),
    "video-fp32": ("teacher", {"stage": "video", "precision": "no", "ckpt": False}),
    "image-bf16-ckpt-8bit": (
        "teacher",
        {"stage": "image", "precision": "bf16", "ckpt": True, "optimizer": "adamw8bit"},
    ),
    "image-bf16-ckpt": ("teacher", {"stage": "image", "precision": "bf16", "ckpt": True}),
    "distill-fast-bf16-ckpt-8bit": (
        "distill",
        {"mode": "fast", "precision": "bf16", "ckpt": True, "optimizer": "adamw8bit"},
    ),
    "distill-balanced-bf16-ckpt-8bit": (
        "distill",
        {"mode": "balanced", "precision": "bf16", "ckpt": True, "optimizer": "adamw8bit"},
    ),
    "gen-fast-bf16": ("generate", {"mode": "fast", "precision": "bf16"}),
    "gen-balanced-bf16": ("generate", {"mode": "balanced", "precision": "bf16"}),
    "gen-teacher-bf16": ("generate", {"mode": "teacher", "precision": "bf16", "steps": 3}),
    "gen-fast-fp32": ("generate", {"mode": "fast", "precision": "fp32"}),
}
DISTILL_SOLVER_STEPS = 1  # teacher DDIM steps per window in the bench (the default 10 is 10× the teacher work)


def rss_gb() -> float:
    """Current resident set size of this process in GB (from /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


# --- the SD1.5 folder ------------------------------------------------------------------------------


def write_sd15_folder(folder: Path) -> Path:
    """Random-weight SD1.5 UNet and VAE in diffusers layout (built from the real configs)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (folder / "vae").is_dir():
        return folder
    torch.manual_seed(0)
    for name, cls, config in (("unet", UNet2DConditionModel, SD15_UNET), ("vae", AutoencoderKL, SD15_VAE)):
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model.save_pretrained(folder / name, safe_serialization=True)
        del model
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=2,
        )  # fmt: skip
    )
    return folder


# --- the cases (run in a child process) ------------------------------------------------------------


def synthetic_batch(config, frames: int, seed: int = 0):
    """One training window at the model's pixel size: images in [-1, 1], mel audio features."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s = config.sample_size
    return {
        "frames": torch.rand(1, frames, 3, s, s, generator=g) * 2 - 1,
        "reference": torch.rand(1, 3, s, s, generator=g) * 2 - 1,
        "motion": torch.rand(1, config.motion_frames, 3, s, s, generator=g) * 2 - 1,
        "audio_features": torch.randn(1, frames, config.audio_window_size, config.audio_feature_dim, generator=g),
    }


def model_bytes(model) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"params_total_m": total / 1e6, "params_trainable_m": trainable / 1e6}


def run_training_case(kind: str, options: dict, sd: Path | None, device: str = "cpu", steps: int = 1,
                      preset: str | ModelConfig = "sd15") -> dict:  # fmt: skip
    """One teacher (``kind`` 'teacher') or distillation ('distill') training step at batch 1.

    ``sd``: the SD1.5 folder to start from (None: fresh random weights, `FadaModel.from_config`).
    ``steps`` > 1: the first step warms up (allocations, kernels) and the rest are timed (every step's
    seconds are in ``step_times_s``). ``preset``: a preset's name or a `ModelConfig`.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from pipelines.distill import TEACHER_DTYPES, DistillConfig, build_student_from_teacher, distill_loss
    from pipelines.model import FadaModel
    from pipelines.model_config import get_preset
    from pipelines.schedulers import sd15_alphas_cumprod
    from pipelines.train_teacher import TeacherTrainConfig, set_trainable, teacher_loss
    from pipelines.training import TrainingState, make_optimizer, optimizer_step

    device = torch.device(device)
    cuda = device.type == "cuda"
    base = rss_gb()
    began = time.perf_counter()
    config = get_preset(preset) if isinstance(preset, str) else preset
    common = {"batch_size": 1, "mixed_precision": options["precision"], "gradient_checkpointing": options["ckpt"],
              "optimizer": options.get("optimizer", "adamw")}  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):  # random weights drawn on the GPU itself: seconds, not a minute of CPU init
        model = FadaModel.from_config(config) if sd is None else FadaModel.from_pretrained_sd(config, sd)
    model.to(device)
    if kind == "teacher":
        train_config = TeacherTrainConfig(stage=options["stage"], loss_weighting="v", **common)
        trained = model
        params = set_trainable(model, train_config.stage, train_config.video_trainable)
        frames = 1 if train_config.stage == "image" else config.frames_per_clip
    else:
        solver_steps = options.get("solver_steps", DISTILL_SOLVER_STEPS)
        train_config = DistillConfig(mode=options["mode"], solver_steps=solver_steps, windows=4, **common)
        with torch.device(device):  # the student drawn where it trains, then the teacher's weights copied in
            trained = build_student_from_teacher(model, train_config.cfg_conditioning, config.cfg_tokens)
        model.eval().requires_grad_(False)
        if options["precision"] != "no":  # as `distill` holds its frozen teacher
            model.to(dtype=TEACHER_DTYPES[options["precision"]])
        params = {n: p for n, p in trained.named_parameters() if p.requires_grad}
        frames = config.frames_per_clip
    if options["ckpt"]:
        trained.enable_gradient_checkpointing()
    optimizer, lr_scheduler = make_optimizer(params, train_config)
    AcceleratorState._reset_state()  # a case after another in the same process (bench/gpu_check.py) starts afresh
    accelerator = Accelerator(cpu=not cuda, mixed_precision=train_config.mixed_precision)
    trained, optimizer = accelerator.prepare(trained, optimizer)  # the LR schedule stays outside, as in `fit`
    state = TrainingState(params, optimizer, lr_scheduler, None, None)
    alphas_cumprod = sd15_alphas_cumprod(torch.float32).to(device)
    batch = {k: v.to(device) for k, v in synthetic_batch(config, frames).items()}
    loaded_s, loaded_gb = time.perf_counter() - began, rss_gb()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for step in range(steps):
        stepped = time.perf_counter()
        generator = torch.Generator().manual_seed(step)
        with accelerator.autocast():
            if kind == "teacher":
                loss = teacher_loss(trained, batch, alphas_cumprod, generator, train_config)
            else:
                loss, _record = distill_loss(trained, model, batch, alphas_cumprod, generator, train_config)
        if cuda:
            torch.cuda.synchronize(device)
        forward_s = time.perf_counter() - stepped
        accelerator.backward(loss)
        optimizer_step(accelerator, state, train_config)
        if cuda:
            torch.cuda.synchronize(device)
        timings.append((forward_s, time.perf_counter() - stepped))
    timed = timings[1:] or timings  # the first step warms up when there are more
    row = {
        "loss": float(loss.detach()), "frames": frames, "load_s": loaded_s, "rss_base_gb": base,
        "rss_loaded_gb": loaded_gb,
        "forward_s": sum(t[0] for t in timed) / len(timed), "step_s": sum(t[1] for t in timed) / len(timed),
        "timed_steps": len(timed), "step_times_s": [t[1] for t in timings],
        **model_bytes(accelerator.unwrap_model(trained)),
    }  # fmt: skip
    if cuda:
        row["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        row["gpu_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    return row


def save_checkpoints(sd: Path | None, work: Path, preset: str = "sd15", dtype: str = "fp32",
                     device: str = "cpu") -> dict[str, Path]:  # fmt: skip
    """Teacher, fast and balanced student checkpoints of the random-weight model (written once).

    ``sd``: the SD1.5 folder the teacher starts from (None: fresh random weights); ``dtype``: the
    dtype the weights are saved in (bf16 halves the disk and load time of a bf16 run).
    """
    import torch

    from pipelines.checkpoint import save_checkpoint
    from pipelines.devices import DTYPES
    from pipelines.distill import build_student_from_teacher
    from pipelines.model import FadaModel
    from pipelines.model_config import get_preset

    paths = {mode: work / f"ckpt-{mode}" for mode in ("teacher", "fast", "balanced")}
    if all((p / "fada_checkpoint.json").is_file() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    config = get_preset(preset)
    with torch.device(device):  # drawn where it will run (a GPU: seconds), saved from there
        teacher = FadaModel.from_config(config) if sd is None else FadaModel.from_pretrained_sd(config, sd)
    teacher.to(dtype=DTYPES[dtype])
    history = [{"stage": "image", "steps": 0}, {"stage": "video", "steps": 0}]
    config = {"model": teacher.config.to_dict(), "stages": history}
    save_checkpoint(paths["teacher"], stage="teacher", mode="teacher", config=config,
                    components=teacher.components(), step=0)  # fmt: skip
    for mode, conditioning in (("fast", "tokens"), ("balanced", "none")):
        with torch.device(device):
            student = build_student_from_teacher(teacher, conditioning, teacher.config.cfg_tokens)
        config = {"model": student.config.to_dict(), "train": {"windows": 4, "mode": mode}}
        save_checkpoint(paths[mode], stage="student", mode=mode, config=config, components=student.components(), step=0)
        del student
    return paths


def run_generation_case(options: dict, work: Path, device: str = "cpu", seconds: float = 0.64) -> dict:
    """One `generate` call on ``work``'s checkpoint of ``options['mode']``: ``seconds`` of speech (0.64 s = one
    clip of 16 frames), a 512² demo portrait (no face crop)."""
    import numpy as np
    from PIL import Image

    from pipelines.demo_data import make_identity, synthesise_speech
    from pipelines.generate import GenerateConfig
    from pipelines.media import write_audio
    from pipelines.pipeline import generate

    base = rss_gb()
    checkpoint = work / f"ckpt-{options['mode']}"
    portrait, speech = work / "portrait.png", work / f"speech-{seconds:g}s.wav"
    if not portrait.is_file():
        identity = make_identity(0, 512)
        alpha = identity.alpha[..., None]
        image = identity.person * alpha + identity.background * (1 - alpha)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(portrait)
    if not speech.is_file():
        write_audio(speech, synthesise_speech(np.random.default_rng(0), round(seconds * 16000), 140.0))
    config = GenerateConfig(steps=options.get("steps"), crop=False, seed=0)
    stats = generate(checkpoint, portrait, speech, work / f"gen-{options['mode']}.mp4", config, device,
                     options["precision"], quiet=True)  # fmt: skip
    return {"rss_base_gb": base, "nfe": stats.nfe, "steps": stats.steps, "frames": stats.frames,
            "seconds": stats.seconds, "clips": stats.clips, "peak_memory_mb": stats.peak_memory_mb,
            "peak_memory_source": stats.peak_memory_source}  # fmt: skip


def child(case: str, work: Path, limit_gb: float) -> None:
    limit = int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    import torch

    torch.manual_seed(0)
    kind, options = CASES[case]
    row = {"case": case, "kind": kind, **options, "threads": torch.get_num_threads(), "limit_gb": limit_gb}
    try:
        if kind == "generate":
            row |= run_generation_case(options, work)
        else:
            row |= run_training_case(kind, options, work / "sd15")
        row["status"] = "ok"
    except (RuntimeError, MemoryError) as exc:  # the data limit: torch's allocator or Python's
        text = str(exc).splitlines()[0][:200]
        row["status"] = "out of memory" if "alloc" in text.lower() or isinstance(exc, MemoryError) else "error"
        row["error"] = text
    row["peak_rss_gb"] = peak_rss_gb()
    row["tensors_peak_gb"] = row["peak_rss_gb"] - row.get("rss_base_gb", 0.0)
    print("RESULT " + json.dumps(row), flush=True)


# --- static memory, computed on the meta device ---------------------------------------------------


def static_memory_gb(kind: str, options: dict, preset: str = "sd15") -> dict[str, float]:
    """Bytes a training case holds before any activation: weights (fp32; a frozen distillation
    teacher in the autocast dtype), gradients of the trainable weights (fp32) and the optimiser
    state (AdamW: 2 fp32 moments; 8-bit AdamW: 2 one-byte moments per weight, plus block scales,
    ignored). Counted on a model built on the meta device — no memory, no time."""
    import torch

    from pipelines.distill import build_student_from_teacher
    from pipelines.model import FadaModel
    from pipelines.model_config import get_preset
    from pipelines.train_teacher import set_trainable

    with torch.device("meta"):
        model = FadaModel.from_config(get_preset(preset))
        frozen_teacher = 0
        if kind == "teacher":
            set_trainable(model, options["stage"], "audio-temporal")
            trained = model
        else:
            trained = build_student_from_teacher(model, "tokens" if options["mode"] == "fast" else "none")
            frozen_teacher = sum(p.numel() for p in model.parameters()) * (2 if options["precision"] != "no" else 4)
    total = sum(p.numel() for p in trained.parameters())
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    moments = 2 if options.get("optimizer") == "adamw8bit" else 8
    parts = {"weights": 4 * total + frozen_teacher, "grads": 4 * trainable, "optimizer": moments * trainable}
    return {k: v / 1e9 for k, v in parts.items()} | {
        "static": sum(parts.values()) / 1e9,
        "trainable_m": trainable / 1e6,
    }


# --- the parent: cases in order, results after each ----------------------------------------------


def write_results(rows: list[dict], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# sd15 on this CPU (batch 1; bench/bench_sd15.py)",
        "",
        "Random-weight SD1.5 UNets/VAE in diffusers layout (real configs), loaded with `FadaModel.from_pretrained_sd`.",
        f"Each case in its own process under a {rows[0]['limit_gb'] if rows else '?'} GiB data limit; "
        "peak = process peak RSS; tensors = peak − RSS before the model "
        "(≈ what a GPU holds, plus ~0.5 GB CUDA context).",
        "",
        "Static GB = weights + gradients + optimiser state, counted on the meta device (`static_memory_gb`); "
        "activations ≈ tensors − static. On a GPU expect about tensors + 0.5 GB (CUDA context) for a case that ran, "
        "and static + activations for one that did not fit here. Reading: README, § Training at the paper's scale.",
        "",
        "| case | precision | checkpointing | optimizer | frames | status | step s (fwd s) | peak RSS GB | tensors GB |"
        " trainable M | static GB (w + g + opt) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "generate":
            continue
        step = f"{r['step_s']:.0f} ({r['forward_s']:.0f})" if "step_s" in r else "—"
        mem = static_memory_gb(r["kind"], r)
        tensors = f"{r['tensors_peak_gb']:.1f}" if r["status"] == "ok" else "—"
        peak = f"{r['peak_rss_gb']:.1f}" if r["peak_rss_gb"] == r["peak_rss_gb"] else "—"  # NaN: killed
        lines.append(
            f"| {r['case']} | {r['precision']} | {'on' if r['ckpt'] else 'off'} | {r.get('optimizer', 'adamw')} | "
            f"{r.get('frames', '—')} | {r['status']} | {step} | {peak} | {tensors} | {mem['trainable_m']:.0f} | "
            f"{mem['static']:.1f} ({mem['weights']:.1f} + {mem['grads']:.1f} + {mem['optimizer']:.1f}) |"
        )
    lines += ["",
              "| generation | weights | status | NFE / clip | steps | frames | seconds | peak RSS GB | tensors GB |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["kind"] != "generate":
            continue
        lines.append(
            f"| {r['mode']} | {r['precision']} | {r['status']} | {r.get('nfe', '—')} | {r.get('steps', '—')} | "
            f"{r.get('frames', '—')} | {r.get('seconds', float('nan')):.0f} | {r['peak_rss_gb']:.1f} | "
            f"{r['tensors_peak_gb']:.1f} |"
        )
    errors = [f"- {r['case']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", *errors]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the SD1.5 weights and checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards (reuse it in the next run)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases, in order")
    parser.add_argument("--limit-gb", type=float, default=20.0, help="data limit per case process (GiB)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sd15", help="results stem (.json, .md)")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        write_results(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return
    if args.child == "checkpoints":
        save_checkpoints(args.work / "sd15", args.work)
        return
    if args.child:
        child(args.child, args.work, args.limit_gb)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="fada-sd15-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        write_sd15_folder(work / "sd15")
        print(f"SD1.5 folder ready in {time.perf_counter() - began:.0f} s: {work / 'sd15'}", flush=True)
        old = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else []
        rows = [r for r in old if r["case"] not in cases]
        for case in cases:
            began = time.perf_counter()
            if CASES[case][0] == "generate":  # teacher and students written once, before the first clip
                subprocess.run([sys.executable, __file__, "--child", "checkpoints", "--work", str(work)], check=True)
            command = [sys.executable, __file__, "--child", case, "--work", str(work), "--limit-gb", str(args.limit_gb)]
            done = subprocess.run(command, capture_output=True, text=True)
            found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if found:
                row = json.loads(found[-1].removeprefix("RESULT "))
            else:  # killed (e.g. the kernel's OOM killer) before it could report
                kind, options = CASES[case]
                tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
                row = {"case": case, "kind": kind, **options, "status": f"died (exit {done.returncode})",
                       "error": tail, "peak_rss_gb": float("nan"), "tensors_peak_gb": float("nan"),
                       "limit_gb": args.limit_gb}  # fmt: skip
            row["wall_s"] = time.perf_counter() - began
            rows.append(row)
            write_results(rows, args.out)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
