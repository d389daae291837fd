"""Benchmark: the same 4-second input with the same weights as teacher (75 NFE), balanced (18) and fast (6).

For each preset a random-init (seeded) teacher is saved (as in `bench_generate`) and two students
are made from it with `build_student_from_teacher` — balanced (no CFG conditioning) and fast (CFG
tokens). Untrained students equal the teacher at init, which is all a timing needs. Each mode runs
once through `pipelines.generate.generate` after a 1-step warm-up, on the same portrait, speech and
seed. Reports seconds, NFE-D, peak memory and the speed ratio teacher_seconds / mode_seconds, and
splits each run's time into the denoising net, the reference net and everything else (model load,
face crop, audio features, VAE/pixel decode, mp4 write) to show where time goes when the wall-clock
ratio falls short of the NFE ratio (75/6 = 12.5 for fast).

Peak memory: CUDA max allocated per run on a GPU; on CPU the process's peak RSS, which only grows —
the modes therefore run in the order fast, balanced, teacher (rising expected memory).

    python bench/bench_modes.py [--presets tiny,demo] [--device auto] [--dtype fp32] [--threads N]

Writes bench/results/modes.json and bench/results/modes.md.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import (  # noqa: E402
    AUDIO_SECONDS,
    SEED,
    machine_info,
    make_inputs,
    make_teacher,
    parse_bench_arguments,
)

from pipelines.checkpoint import save_checkpoint  # noqa: E402
from pipelines.devices import resolve_device, resolve_dtype  # noqa: E402
from pipelines.distill import build_student_from_teacher  # noqa: E402
from pipelines.generate import GenerateConfig, generate  # noqa: E402
from pipelines.model import FadaModel  # noqa: E402
from pipelines.progress import console  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"fast": "tokens", "balanced": "none"}  # student mode -> CFG conditioning
ORDER = ("fast", "balanced", "teacher")  # rising expected memory (CPU peak RSS only grows)


def make_student(teacher: Path, mode: str, folder: Path) -> Path:
    """A fresh student of ``teacher`` (equal to it at init) saved as stage 'student'."""
    model = build_student_from_teacher(FadaModel.from_checkpoint(teacher, expect_stage="teacher"), MODES[mode])
    return save_checkpoint(
        folder / f"{teacher.name}-{mode}",
        stage="student",
        mode=mode,
        config={"model": model.config.to_dict(), "train": {"windows": 4}},
        components=model.components(),
        step=0,
        extra={"note": "untrained student for bench_modes"},
    )


@contextlib.contextmanager
def timed_networks(device: torch.device):
    """Seconds spent inside `FadaModel.denoise` and `FadaModel.reference_features` (synchronised on CUDA)."""
    totals = {"denoise": 0.0, "reference": 0.0}
    originals = {"denoise": FadaModel.denoise, "reference": FadaModel.reference_features}

    def wrap(name):
        original = originals[name]

        def timed(self, *args, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = original(self, *args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals[name] += time.perf_counter() - start
            return result

        return timed

    FadaModel.denoise, FadaModel.reference_features = wrap("denoise"), wrap("reference")
    try:
        yield totals
    finally:
        FadaModel.denoise, FadaModel.reference_features = originals["denoise"], originals["reference"]


def run(presets: list[str], device_name: str, dtype_name: str) -> list[dict]:
    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_modes_") as tmp:
        folder = Path(tmp)
        image, audio = make_inputs(folder)
        for preset in presets:
            teacher = make_teacher(preset, folder)
            checkpoints = {"teacher": teacher, **{mode: make_student(teacher, mode, folder) for mode in MODES}}
            preset_rows = {}
            for mode in ORDER:
                checkpoint = checkpoints[mode]
                warm = GenerateConfig(steps=4 if mode != "teacher" else 1, seed=SEED)
                generate(checkpoint, image, audio, folder / f"warmup-{preset}-{mode}.mp4", warm, device, dtype, True)
                console.print(f"generating {AUDIO_SECONDS:.0f} s with the {preset} {mode} model on {device}…")
                with timed_networks(device) as net_seconds:
                    stats = generate(
                        checkpoint,
                        image,
                        audio,
                        folder / f"{preset}-{mode}.mp4",
                        GenerateConfig(seed=SEED),
                        device,
                        dtype,
                        quiet=True,
                    )
                preset_rows[mode] = {
                    "preset": preset,
                    "model": mode,
                    **asdict(stats),
                    "denoise_seconds": net_seconds["denoise"],
                    "reference_seconds": net_seconds["reference"],
                    "other_seconds": stats.seconds - net_seconds["denoise"] - net_seconds["reference"],
                }
            base = preset_rows["teacher"]
            for mode in ("teacher", "balanced", "fast"):
                row = preset_rows[mode]
                row["speed_ratio"] = base["seconds"] / row["seconds"]
                row["denoise_speed_ratio"] = base["denoise_seconds"] / row["denoise_seconds"]
                row["nfe_ratio"] = base["nfe"] / row["nfe"]
                rows.append(row)
            write_results(rows)
    return rows


def write_results(rows: list[dict]) -> Table:
    table = Table(title=f"teacher vs balanced vs fast on a {AUDIO_SECONDS:.0f}-second input")
    columns = ["preset", "model", "sampler", "NFE/clip", "s", "s per video s", "speed ×", "NFE ×"]
    columns += ["denoise s", "denoise ×", "reference s", "other s", "peak MB"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("preset", "model", "sampler") else "right")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            row["preset"],
            row["model"],
            row["sampler"],
            str(row["nfe"]),
            f"{row['seconds']:.2f}",
            f"{row['seconds_per_video_second']:.3f}",
            f"{row['speed_ratio']:.2f}",
            f"{row['nfe_ratio']:.1f}",
            f"{row['denoise_seconds']:.2f}",
            f"{row['denoise_speed_ratio']:.2f}",
            f"{row['reference_seconds']:.2f}",
            f"{row['other_seconds']:.2f}",
            f"{row['peak_memory_mb']:.0f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    machine = machine_info(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "modes.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    header = [
        f"# bench_modes: teacher (DDIM 25×3) vs balanced (PeRFlow 6×3) vs fast (PeRFlow 6×1), {AUDIO_SECONDS:.0f} s",
        "",
        f"Same random-init weights (students untrained, equal to the teacher at init), one run each after a "
        f"warm-up. Machine: {machine}.",
        "s = wall clock of the whole `generate` call; speed × = teacher s / s; denoise s = time inside the "
        "denoising net; other s = load, face crop, audio features, decode, mp4 write. Peak MB: "
        + (
            "CUDA max allocated per run."
            if machine["gpu"]
            else "process peak RSS (cumulative, run order fast, balanced, teacher)."
        ),
        "",
    ]
    (RESULTS / "modes.md").write_text("\n".join(header + lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    args, presets = parse_bench_arguments(__doc__, argv)
    rows = run(presets, args.device, args.dtype)
    console.print(write_results(rows))
    console.print(f"wrote {RESULTS / 'modes.json'} and {RESULTS / 'modes.md'}")


if __name__ == "__main__":
    main()
