"""The GPU check behind bench/gpu_check.sh: the sd15 preset on one CUDA GPU, in ≤ 5 minutes.

Rows, in this order, each printed the moment it completes (a run cut short still reports what it did)
and written to OUT/gpu.json and OUT/gpu.md after every row:

1. image-stage teacher step (F = 1) and 2. video-stage teacher step (F = 16), batch 1, bf16 autocast,
   gradient checkpointing: 3 steps, the first warms up (kernels, allocations), the other two are timed;
3. a 2-step fast distillation (frozen teacher in bf16, 10 teacher DDIM steps per window as a default
   run), each step's seconds;
4.–6. one 16-frame clip at 512² per mode, bf16 weights: fast (6 NFE), balanced (18) and teacher (75),
   through `FadaPipeline` (reference latent, audio features, the sampler, the VAE decode);
7. host-device syncs: one tiny step of each training stage and sampler under
   ``torch.cuda.set_sync_debug_mode("error")`` (tests/host_syncs.py; on a CPU, counted on meta).

Each row has its seconds and its peak memory: GPU memory (`torch.cuda.max_memory_allocated`, reset
before the row, so the model's weights are in it) on CUDA, the process's peak RSS on a CPU. Weights
are random (`FadaModel.from_config`, drawn on the GPU itself: seconds, not a minute of CPU init): the
sizes and the arithmetic are SD1.5's, the pictures noise; nothing is read from disk or downloaded.
A row that fails (out of memory, say) is a row with its error; the check goes on. A row that would
start after ``--budget-s`` seconds is reported as skipped, so the run ends in time.

    python bench/gpu_check.py --out /tmp/gpu                             # on the GPU machine (gpu_check.sh)
    python bench/gpu_check.py --out /tmp/gpu --device cpu --preset tiny  # a dry run of the same code, ~2 min

``--preset tiny`` is the tiny preset with a tiny VAE (latent space, as sd15), 32² frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata as metadata
import json
import resource
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TRAINING = [  # row, kind, options, steps (with more than one, the first warms up)
    ("image-stage step", "teacher", {"stage": "image", "precision": "bf16", "ckpt": True}, 3),
    ("video-stage step", "teacher", {"stage": "video", "precision": "bf16", "ckpt": True}, 3),
    ("distillation, 2 steps", "distill", {"mode": "fast", "precision": "bf16", "ckpt": True, "solver_steps": 10}, 2),
]
CLIPS = [("fast", 6), ("balanced", 18), ("teacher", 75)]  # mode, the NFE per clip it must report
VERSIONS = ("torch", "diffusers", "accelerate", "transformers", "huggingface_hub", "numpy", "safetensors", "av",
            "soundfile")  # fmt: skip


def model_config(preset: str):
    """The preset's `ModelConfig`; ``tiny`` with a tiny VAE, so the dry run takes sd15's latent-space path."""
    from pipelines.model_config import get_preset

    if preset != "tiny":
        return get_preset(preset)
    return get_preset("tiny", latent_codec="vae", latent_channels=4, vae_block_out_channels=(8, 16),
                      vae_layers_per_block=1, vae_norm_num_groups=4)  # fmt: skip


def environment(device: str, preset: str) -> dict:
    import torch

    info = {"device": device, "preset": preset, "python": sys.version.split()[0]}
    for name in VERSIONS:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1), "cuda": torch.version.cuda,
                 "capability": f"{props.major}.{props.minor}"}  # fmt: skip
    return info


def imported_distributions() -> dict[str, str]:
    """name → version of every installed distribution a module loaded by now belongs to (what the GPU machine
    must hold: its image's packages or the wheels it was brought)."""
    owners = metadata.packages_distributions()
    found = {}
    for module in list(sys.modules):
        top = module.partition(".")[0]
        for name in owners.get(top, ()):
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


class Memory:
    """Peak memory of one row: CUDA's max allocated since `start`, or the process's peak RSS on a CPU."""

    def __init__(self, device: str):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def start(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux

    @property
    def label(self) -> str:
        return "peak GPU" if self.cuda else "peak RSS"


# --- the rows ------------------------------------------------------------------------------------------


def training_row(kind: str, options: dict, steps: int, config, device: str) -> dict:
    """Rows 1–3: `bench_sd15.run_training_case` — the model drawn on the device, `set_trainable` or the student
    built from the teacher, accelerate's autocast, `teacher_loss` / `distill_loss`, `optimizer_step`."""
    from bench_sd15 import run_training_case

    row = run_training_case(kind, options, None, device, steps, config)
    return {"seconds": row["step_s"], "build_s": row["load_s"], "step_times_s": row["step_times_s"],
            "frames": row["frames"], "trained_m": row["params_trainable_m"], "loss": row["loss"]}  # fmt: skip


def clip_row(mode: str, config, device: str, speech_seconds: float) -> dict:
    """Rows 4–6: one `FadaPipeline` call of ``mode`` — the teacher's or the student's architecture drawn on the
    device and held in bf16, as `fada generate --dtype auto` holds a loaded checkpoint on a GPU — on a random
    portrait at the model's size and ``speech_seconds`` of noise as speech, centre-cropped. Peak memory: the
    call's own (`FadaPipeline` resets CUDA's peak as it starts; weights included)."""
    import numpy as np
    import torch

    from pipelines.checkpoint import FORMAT_VERSION, CheckpointInfo
    from pipelines.generate import GenerateConfig
    from pipelines.model import FadaModel
    from pipelines.pipeline import FadaPipeline

    began = time.perf_counter()
    conditioning = "tokens" if mode == "fast" else "none"  # the fast student's CFG tokens (Eq. 10)
    torch.manual_seed(0)
    with torch.device(device):
        model = FadaModel.from_config(dataclasses.replace(config, cfg_conditioning=conditioning)).to(torch.bfloat16)
    stage, train = ("teacher", {}) if mode == "teacher" else ("student", {"mode": mode, "windows": 4})
    stages = [{"stage": "image", "steps": 0}, {"stage": "video", "steps": 0}]
    info = CheckpointInfo(path=Path(f"random-{mode}"), format_version=FORMAT_VERSION, stage=stage, mode=mode,
                          config={"model": model.config.to_dict(), "stages": stages, "train": train}, step=0,
                          manifest_hash=None, teacher_hash=None, extra={})  # fmt: skip
    pipe = FadaPipeline(model, info, torch.device(device))
    build_s = time.perf_counter() - began
    rng = np.random.default_rng(0)
    size = config.sample_size
    portrait = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    speech = (0.1 * rng.standard_normal(round(speech_seconds * 16000))).astype(np.float32)
    result = pipe(portrait, (speech, 16000), config=GenerateConfig(crop=False, seed=0))
    stats = result.stats
    row = {"seconds": stats.seconds, "build_s": build_s, "nfe": stats.nfe, "steps": stats.steps, "frames": stats.frames,
           "clips": stats.clips, "size": size, "video_shape": list(result.frames.shape)}  # fmt: skip
    if stats.peak_memory_source == "cuda_max_allocated":
        row["call_peak_gb"] = stats.peak_memory_mb * 2**20 / 1e9
    return row


def host_syncs_row(device: str) -> dict:
    """Row 7: the tiny training and sampling steps under CUDA's sync detection (on a CPU: counted on meta)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import host_syncs

    if device.startswith("cuda"):
        errors = host_syncs.cuda_sync_errors()
        failed = {name: error for name, error in errors.items() if error}
        return {"steps": len(errors), "syncing_steps": len(failed), "first_error": next(iter(failed.values()), ""),
                "how": "CUDA sync debug mode"}  # fmt: skip
    counts = host_syncs.count("meta")
    syncing = {name: sum(calls.values()) for name, calls in counts.items() if calls}
    return {"steps": len(counts), "syncing_steps": len(syncing), "first_error": json.dumps(syncing) if syncing else "",
            "how": "counted on meta"}  # fmt: skip


# --- the report ----------------------------------------------------------------------------------------


def row_line(r: dict) -> str:
    """The markdown line of one row (printed as the row completes, and in gpu.md)."""
    name = r["name"]
    if r["status"] != "ok":
        return f"| {name} | {r['status']} | {r.get('error', '')} | | |"
    peak = f"{r['peak_gb']:.2f} GB"
    if r["kind"] == "syncs":
        what = f"{r['syncing_steps']} of {r['steps']} steps sync ({r['how']}) {r['first_error']}".strip()
        return f"| {name} | ok | {what} | {r['wall_s']:.1f} | {peak} |"
    if r["kind"] == "clip":
        nfe = f"{r['nfe']}" if r["nfe"] == r["expected_nfe"] else f"{r['nfe']} (NOT {r['expected_nfe']})"
        what = (f"NFE/clip {nfe}, {r['steps']} steps, {r['frames']} frames at {r['size']}²; "
                f"{r['frames'] / r['seconds']:.2f} frames/s (model built in {r['build_s']:.1f} s)")  # fmt: skip
        return f"| {name} | ok | {what} | {r['seconds']:.2f} | {peak} |"
    steps = ", ".join(f"{s:.2f}" for s in r["step_times_s"])
    what = (f"{r['frames']} frame(s), {r['trained_m']:.4g} M trained, bf16 autocast + checkpointing; "
            f"steps {steps} s (model built in {r['build_s']:.1f} s)")  # fmt: skip
    return f"| {name} | ok | {what} | {r['seconds']:.2f} | {peak} |"


def write(out: Path, env: dict, rows: list[dict]) -> None:
    (out / "gpu.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    where = env.get("gpu", env["device"])
    memory = "peak GPU memory" if env["device"].startswith("cuda") else "peak RSS (a CPU dry run)"
    lines = [f"# GPU check: {env['preset']} on {where} (torch {env['torch']}; bench/gpu_check.sh)", "",
             f"Seconds: a training row's timed step (mean), a clip row's whole call; memory: {memory}.", "",
             "| row | status | what | seconds | memory |", "|---|---|---|---|---|",
             *(row_line(r) for r in rows)]  # fmt: skip
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--preset", default="sd15", help="sd15 (default), or tiny (with a tiny VAE) for a dry run")
    parser.add_argument("--speech-seconds", type=float, default=0.64, help="speech per clip row (0.64 s: one clip)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no row after this many seconds")
    args = parser.parse_args()
    began = time.perf_counter()
    import torch

    from pipelines.devices import enable_tf32

    args.out.mkdir(parents=True, exist_ok=True)
    device = str(torch.device(args.device))
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available here; on a CPU pass --device cpu --preset tiny (a dry run).")
    enable_tf32(torch.device(device))
    config = model_config(args.preset)
    env = environment(device, args.preset)
    print(json.dumps(env), flush=True)
    print("| row | status | what | seconds | memory |\n|---|---|---|---|---|", flush=True)
    memory, rows = Memory(device), []

    def run(row: dict, case) -> None:
        if time.perf_counter() - began > args.budget_s:
            row |= {"status": "skipped", "error": f"over the {args.budget_s:g} s budget"}
        else:
            memory.start()
            started = time.perf_counter()
            try:
                row |= case() | {"status": "ok"}
            except Exception as exc:  # a failing case (e.g. out of memory) is a row; the check goes on
                row |= {"status": type(exc).__name__, "error": (str(exc).splitlines() or [""])[0][:200]}
                traceback.print_exc()
            row |= {"wall_s": time.perf_counter() - started}
            row["peak_gb"] = row.pop("call_peak_gb", None) or memory.peak_gb()
        rows.append(row)
        print(row_line(row), flush=True)
        write(args.out, env, rows)

    for name, kind, options, steps in TRAINING:
        run({"name": name, "kind": kind, **options},
            lambda k=kind, o=options, n=steps: training_row(k, o, n, config, device))  # fmt: skip
    for mode, expected_nfe in CLIPS:
        row = {"name": f"{mode} clip", "kind": "clip", "mode": mode, "expected_nfe": expected_nfe, "precision": "bf16"}
        run(row, lambda m=mode: clip_row(m, config, device, args.speech_seconds))
    run({"name": "host-device syncs", "kind": "syncs"}, lambda: host_syncs_row(device))
    env |= {"seconds": time.perf_counter() - began, "imported": imported_distributions()}
    write(args.out, env, rows)
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    print(f"done in {env['seconds']:.0f} s; rows not ok: {failed or 'none'}", flush=True)


if __name__ == "__main__":
    main()
