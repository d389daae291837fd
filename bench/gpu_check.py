"""The GPU check behind bench/gpu_check.sh: sd15 training and generation on one CUDA GPU.

1. teacher steps at batch 1 in bf16 autocast: video stage (F = 16) with and without gradient
   checkpointing, image stage (F = 1) with it; distillation steps at batch 1 in bf16 (frozen teacher
   in bf16, 10 teacher DDIM steps per window as the default run), fast and balanced. Each: one
   warm-up step, then the mean of the timed steps; peak GPU memory (`max_memory_allocated`).
2. checkpoints of the (random-weight) teacher and both students, saved in bf16; then one `generate`
   call per mode on 2.56 s of speech (64 frames, 4 clips of 16) at 512², bf16: NFE per clip, seconds,
   frames per second (the whole call, model load included), peak GPU memory.

Weights are random (`FadaModel.from_config`): the sizes and the arithmetic are SD1.5's, the pictures
are noise. Writes OUT/gpu.json and OUT/gpu.md after every case.

    python bench/gpu_check.py --out /tmp/gpu                         # on the GPU machine
    python bench/gpu_check.py --out /tmp/gpu --device cpu --preset tiny   # a dry run of the code path
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sd15 import run_generation_case, run_training_case, save_checkpoints  # noqa: E402

TRAINING = [
    ("teacher video, ckpt", "teacher", {"stage": "video", "precision": "bf16", "ckpt": True}),
    ("teacher video", "teacher", {"stage": "video", "precision": "bf16", "ckpt": False}),
    ("teacher image, ckpt", "teacher", {"stage": "image", "precision": "bf16", "ckpt": True}),
    ("distill fast, ckpt", "distill", {"mode": "fast", "precision": "bf16", "ckpt": True, "solver_steps": 10}),
    ("distill balanced, ckpt", "distill", {"mode": "balanced", "precision": "bf16", "ckpt": True, "solver_steps": 10}),
]
GENERATION = [("teacher", 75), ("balanced", 18), ("fast", 6)]  # mode, the NFE per clip it must report


def environment(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gb": props.total_memory / 1e9, "capability": [props.major, props.minor]}
    return info


def free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def write(out: Path, env: dict, rows: list[dict]) -> None:
    (out / "gpu.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = [f"# GPU check ({env.get('gpu', env['device'])}, torch {env['torch']}; bench/gpu_check.sh)", "",
             "| training step (batch 1, bf16) | frames | status | step s | forward s | peak GPU GB | trainable M |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["kind"] == "generate":
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | — | {r['status']}: {r.get('error', '')} | — | — | — | — |")
            continue
        lines.append(
            f"| {r['name']} | {r['frames']} | ok | {r['step_s']:.2f} | {r['forward_s']:.2f} | "
            f"{r.get('gpu_peak_gb', float('nan')):.1f} | {r['params_trainable_m']:.1f} |"
        )
    lines += ["", "| generation (bf16) | NFE / clip | steps | frames | seconds | frames / s | peak GPU GB |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["kind"] != "generate":
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | — | — | — | {r['status']}: {r.get('error', '')} | — | — |")
            continue
        lines.append(
            f"| {r['name']} | {r['nfe']} | {r['steps']} | {r['frames']} | {r['seconds']:.1f} | "
            f"{r['frames'] / r['seconds']:.2f} | {r['peak_memory_mb'] / 1e3:.1f} |"
        )
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--preset", default="sd15", help="model preset (tiny for a dry run)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per case (the first warms up)")
    parser.add_argument("--speech-seconds", type=float, default=2.56, help="speech per generated video")
    parser.add_argument("--work", type=Path, help="folder for the checkpoints (default: a temp dir)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    print(json.dumps(env), flush=True)
    rows: list[dict] = []
    for name, kind, options in TRAINING:
        began = time.perf_counter()
        row = {"name": name, "kind": kind, **options}
        try:
            row |= run_training_case(kind, options, None, args.device, args.steps, args.preset) | {"status": "ok"}
        except Exception as exc:  # a case that fails (e.g. out of memory) is a row; the check goes on
            row |= {"status": type(exc).__name__, "error": str(exc).splitlines()[0][:160]}
            traceback.print_exc()
        row["wall_s"] = time.perf_counter() - began
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args.out, env, rows)
        free(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="fada-gpu-"))
    began = time.perf_counter()
    save_checkpoints(None, work, args.preset, "bf16")
    print(f"checkpoints saved in {time.perf_counter() - began:.0f} s", flush=True)
    for mode, expected_nfe in GENERATION:
        row = {"name": mode, "kind": "generate", "mode": mode, "precision": "bf16", "expected_nfe": expected_nfe}
        try:
            row |= run_generation_case(row, work, args.device, args.speech_seconds) | {"status": "ok"}
        except Exception as exc:
            row |= {"status": type(exc).__name__, "error": str(exc).splitlines()[0][:160]}
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args.out, env, rows)
        free(args.device)


if __name__ == "__main__":
    main()
