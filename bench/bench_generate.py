"""Benchmark: teacher generation (DDIM 25 steps × 3 CFG branches) of a fixed 4-second input.

For each preset, a random-init (seeded) teacher is saved to a temporary folder and run through
`pipelines.pipeline.generate` on a demo-data portrait and 4 s of synthesised speech, after one
1-step warm-up run (face detector, first-call allocations). Reports seconds per second of video,
NFE-D and peak memory (CUDA max allocated on a GPU; the process's peak RSS on CPU — on CPU that
peak covers the whole process, so presets run later include earlier ones).

    python bench/bench_generate.py [--presets tiny,demo] [--device auto] [--dtype fp32] [--threads N]

Writes bench/results/generate.json and bench/results/generate.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipelines import demo_data, media  # noqa: E402
from pipelines.checkpoint import save_checkpoint  # noqa: E402
from pipelines.devices import resolve_device, resolve_dtype  # noqa: E402
from pipelines.generate import GenerateConfig  # noqa: E402
from pipelines.model import FadaModel  # noqa: E402
from pipelines.model_config import get_preset  # noqa: E402
from pipelines.pipeline import generate  # noqa: E402
from pipelines.progress import console  # noqa: E402

AUDIO_SECONDS = 4.0  # the fixed input length
PORTRAIT_SIZE = 256  # demo-data identity rendered at this size, then face-cropped by generate
SEED = 0  # weights, speech and noise
RESULTS = Path(__file__).resolve().parent / "results"


def machine_info(rows: list[dict]) -> dict:
    """Where the figures were measured: device, torch, CPU threads, platform, GPU name."""
    return {
        "device": rows[0]["device"] if rows else "",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def parse_bench_arguments(doc: str, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """--presets, --device, --dtype, --threads (applied here); unknown presets fail before any work."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--presets", default="tiny,demo", help="comma-separated model presets (tiny, demo, sd15)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    for name in presets:
        get_preset(name)
    return args, presets


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """A demo-data portrait (identity 0 over its background) and 4 s of synthesised speech."""
    identity = demo_data.make_identity(0, PORTRAIT_SIZE)
    alpha = identity.alpha[..., None]
    portrait = identity.person * alpha + identity.background * (1 - alpha)  # (S, S, 3) float RGB
    image_path = folder / "portrait.png"
    Image.fromarray(np.clip(np.rint(portrait), 0, 255).astype(np.uint8)).save(image_path)
    rng = np.random.default_rng(SEED)
    speech = demo_data.synthesise_speech(rng, int(AUDIO_SECONDS * media.AUDIO_SR), identity.style.pitch_hz)
    audio_path = folder / "speech.wav"
    media.write_audio(audio_path, speech)
    return image_path, audio_path


def make_teacher(preset: str, folder: Path) -> Path:
    """A random-init teacher of ``preset`` (seeded), saved as a checkpoint folder."""
    torch.manual_seed(SEED)
    model = FadaModel.from_config(get_preset(preset))
    return save_checkpoint(
        folder / f"teacher-{preset}",
        stage="teacher",
        mode="teacher",
        config={"model": model.config.to_dict()},
        components=model.components(),
        step=0,
        extra={"note": "random init for bench_generate"},
    )


def run(presets: list[str], device_name: str, dtype_name: str) -> list[dict]:
    """Generate with each preset; the result files are rewritten after each one (long demo runs)."""
    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        folder = Path(tmp)
        image, audio = make_inputs(folder)
        for preset in presets:
            checkpoint = make_teacher(preset, folder)
            warm = GenerateConfig(steps=1, seed=SEED)
            generate(checkpoint, image, audio, folder / f"warmup-{preset}.mp4", warm, device, dtype, quiet=True)
            console.print(f"generating {AUDIO_SECONDS:.0f} s with the {preset} teacher on {device}…")
            out = folder / f"{preset}.mp4"
            stats = generate(checkpoint, image, audio, out, GenerateConfig(seed=SEED), device, dtype, quiet=False)
            rows.append({"preset": preset, **asdict(stats)})
            write_results(rows)
    return rows


def write_results(rows: list[dict]) -> Table:
    table = Table(title=f"teacher generation of a {AUDIO_SECONDS:.0f}-second input")
    columns = ["preset", "size", "F", "M", "clips", "NFE/clip", "s", "s per video s", "peak MB", "memory source"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("preset", "memory source") else "right")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            row["preset"],
            f"{get_preset(row['preset']).sample_size}²",
            str(row["frames_per_clip"]),
            str(row["motion_frames"]),
            str(row["clips"]),
            str(row["nfe"]),
            f"{row['seconds']:.1f}",
            f"{row['seconds_per_video_second']:.2f}",
            f"{row['peak_memory_mb']:.0f}",
            row["peak_memory_source"],
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    machine = machine_info(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generate.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    header = [
        f"# bench_generate: teacher generation of a {AUDIO_SECONDS:.0f}-second input",
        "",
        f"Random-init teachers, DDIM 25 steps × 3 CFG branches, after a 1-step warm-up. Machine: {machine}.",
        "s = wall clock of the whole `generate` call (load, face crop, audio features, sampling, mp4 write).",
        "",
    ]
    (RESULTS / "generate.md").write_text("\n".join(header + lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    args, presets = parse_bench_arguments(__doc__, argv)
    console.print(write_results(run(presets, args.device, args.dtype)))
    console.print(f"wrote {RESULTS / 'generate.json'} and {RESULTS / 'generate.md'}")


if __name__ == "__main__":
    main()
