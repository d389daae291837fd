"""The GPU check behind bench/gpu_check.sh: sd15 training and generation on one CUDA GPU, in ≤ 5 minutes.

0. host-device syncs: one tiny training step of each stage and one step of each sampler under
   ``torch.cuda.set_sync_debug_mode("error")`` (tests/host_syncs.py; on a dry run, counted on meta);
1. teacher steps at batch 1 in bf16 autocast with gradient checkpointing: image stage (F = 1) and
   video stage (F = 16), one warm-up step and the mean of the timed steps; a fast distillation of 2
   steps (frozen teacher in bf16, 10 teacher DDIM steps per window as the default run); peak GPU
   memory (`max_memory_allocated`) of each;
2. checkpoints of the (random-weight) teacher and both students, saved in bf16; then one `generate`
   call per mode on 1.28 s of speech (32 frames, 2 clips of 16) at 512², bf16: NFE per clip, seconds,
   frames per second (the whole call, model load included), peak GPU memory.

Weights are random (`FadaModel.from_config`, drawn on the GPU): the sizes and the arithmetic are
SD1.5's, the pictures are noise. Each row is printed as it completes (a cut run still reports) and
OUT/gpu.json and OUT/gpu.md are rewritten after every row.

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

TRAINING = [  # name, kind, options, steps (the first warms up)
    ("teacher image, ckpt", "teacher", {"stage": "image", "precision": "bf16", "ckpt": True}, 3),
    ("teacher video, ckpt", "teacher", {"stage": "video", "precision": "bf16", "ckpt": True}, 3),
    ("distill fast, ckpt", "distill", {"mode": "fast", "precision": "bf16", "ckpt": True, "solver_steps": 10}, 2),
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


def host_syncs(device: str) -> dict:
    """Row 0: the steps under CUDA's sync detection (a dry run counts the syncs on meta instead)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import host_syncs as syncs

    if device.startswith("cuda"):
        errors = syncs.cuda_sync_errors()
        failed = {name: error for name, error in errors.items() if error}
        return {"steps": len(errors), "syncing_steps": len(failed), "first_error": next(iter(failed.values()), "")}
    raise RuntimeError("no CUDA here: tests/test_host_syncs.py counts the syncs on meta instead")


def row_line(r: dict) -> str:
    """The markdown line of one row (also printed as the row completes)."""
    if r["status"] != "ok":
        return f"| {r['name']} | {r['status']}: {r.get('error', '')} |"
    if r["kind"] == "syncs":
        return f"| {r['name']} | {r['syncing_steps']} of {r['steps']} steps sync {r['first_error']} |"
    if r["kind"] == "generate":
        nfe = f"{r['nfe']}" if r["nfe"] == r["expected_nfe"] else f"{r['nfe']} (NOT {r['expected_nfe']})"
        return (
            f"| {r['name']} | NFE/clip {nfe}, {r['steps']} steps, {r['frames']} frames in {r['seconds']:.1f} s "
            f"({r['frames'] / r['seconds']:.2f} frames/s), peak GPU {r['peak_memory_mb'] / 1e3:.1f} GB |"
        )
    return (
        f"| {r['name']} | {r['frames']} frames: step {r['step_s']:.2f} s (forward {r['forward_s']:.2f} s), "
        f"peak GPU {r.get('gpu_peak_gb', float('nan')):.1f} GB, {r['params_trainable_m']:.0f} M trained |"
    )


def write(out: Path, env: dict, rows: list[dict]) -> None:
    (out / "gpu.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    title = f"# GPU check ({env.get('gpu', env['device'])}, torch {env['torch']}; bench/gpu_check.sh)"
    lines = [title, "", "| row | result |", "|---|---|", *(row_line(r) for r in rows)]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def report(out: Path, env: dict, rows: list[dict], row: dict, began: float) -> None:
    row["wall_s"] = time.perf_counter() - began
    rows.append(row)
    print(row_line(row), f"({row['wall_s']:.0f} s)", flush=True)
    write(out, env, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--preset", default="sd15", help="model preset (tiny for a dry run)")
    parser.add_argument("--speech-seconds", type=float, default=1.28, help="speech per generated video")
    parser.add_argument("--work", type=Path, help="folder for the checkpoints (default: a temp dir)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    print(json.dumps(env), flush=True)
    print("| row | result |\n|---|---|", flush=True)
    rows: list[dict] = []

    def run(row: dict, case) -> None:
        began = time.perf_counter()
        try:
            row |= case() | {"status": "ok"}
        except Exception as exc:  # a case that fails (e.g. out of memory) is a row; the check goes on
            row |= {"status": type(exc).__name__, "error": str(exc).splitlines()[0][:160] if str(exc) else ""}
            traceback.print_exc()
        report(args.out, env, rows, row, began)
        free(args.device)

    run({"name": "host-device syncs", "kind": "syncs"}, lambda: host_syncs(args.device))
    for name, kind, options, steps in TRAINING:
        run({"name": name, "kind": kind, **options},
            lambda k=kind, o=options, n=steps: run_training_case(k, o, None, args.device, n, args.preset))  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="fada-gpu-"))
    began = time.perf_counter()
    save_checkpoints(None, work, args.preset, "bf16", args.device)
    print(f"checkpoints saved in {time.perf_counter() - began:.0f} s", flush=True)
    free(args.device)
    for mode, expected_nfe in GENERATION:
        row = {"name": f"generate {mode}", "kind": "generate", "mode": mode, "precision": "bf16",
               "expected_nfe": expected_nfe}  # fmt: skip
        run(row, lambda r=row: run_generation_case(r, work, args.device, args.speech_seconds))


if __name__ == "__main__":
    main()
