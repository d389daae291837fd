"""Benchmark: peak memory of `generate` against the length of the speech (streaming vs. in-memory).

Each (implementation, seconds) pair runs in its own child process, so the process's peak RSS
(`ru_maxrss`, what `GenerationStats.peak_memory_mb` reports on CPU) belongs to that run alone.
The model is a random-init (seeded) pixel-space teacher from the `tiny` preset with
``sample_size`` overridden to 512 and five UNet levels of 4–8 channels, so that the spatial
attention sits at 32² tokens and a 512² clip is cheap enough on CPU; 1 DDIM step, F = 16, M = 2.
``--before REF`` also runs `pipelines/generate.py` as it was at git REF (e.g. the commit before
streaming, which kept every frame in RAM and featurised the whole speech at once).

    python bench/bench_long_audio.py [--seconds 10,60] [--size 512] [--codec none|vae] [--before REF] [--threads 1]

Writes bench/results/long_audio.json and prints a table (bench/results/long_audio.md is written
by hand from it, with the machine's context).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pipelines import demo_data  # noqa: E402
from pipelines.checkpoint import save_checkpoint  # noqa: E402
from pipelines.model import FadaModel  # noqa: E402
from pipelines.model_config import get_preset  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SEED = 0


def cheap_config(size: int, codec: str = "none"):
    """The tiny preset at ``size``² with enough down-sampling that attention stays at 32² tokens.

    ``codec`` 'vae': SD's latent layout (a 4-level AutoencoderKL, 8× down-sampling, 4 latent channels)
    with 8 channels per VAE level, so that 512² frames are encoded and decoded as sd15 does, cheaply.
    """
    latent = {}
    if codec == "vae":
        latent = {"latent_codec": "vae", "latent_channels": 4, "vae_block_out_channels": (8, 8, 8, 8),
                  "vae_layers_per_block": 1, "vae_norm_num_groups": 4}  # fmt: skip
    levels = max(2, int(np.log2(size // (8 if codec == "vae" else 1) // 32)) + 1)
    return get_preset(
        "tiny",
        **latent,
        sample_size=size,
        block_out_channels=(4,) + (8,) * (levels - 1),
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=4,
    )


def load_generate(ref: str | None) -> types.ModuleType:
    """`GenerateConfig` and `generate` of the working tree, or `pipelines/generate.py` as it was at git ``ref``."""
    if ref is None:
        from pipelines import generate, pipeline

        return types.SimpleNamespace(GenerateConfig=generate.GenerateConfig, generate=pipeline.generate)
    source = subprocess.run(
        ["git", "show", f"{ref}:pipelines/generate.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"generate_at_{ref}")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the file runs
    exec(compile(source, f"{ref}:pipelines/generate.py", "exec"), module.__dict__)
    return module


def child(args) -> None:
    """One generation; prints its stats as JSON on stdout."""
    torch.set_num_threads(args.threads)
    generate = load_generate(args.ref)
    folder = Path(args.folder)
    speech = folder / f"speech_{args.child}.wav"
    t = np.arange(round(args.child * 16_000)) / 16_000
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    sf.write(speech, voice.astype(np.float32), 16_000)
    out = folder / f"out_{args.ref or 'tree'}_{args.child}.mp4"
    config = generate.GenerateConfig(steps=1, frames_per_clip=16, motion_frames=2, crop=False)
    stats = generate.generate(
        folder / "teacher", folder / "portrait.png", speech, out, config, device="cpu", quiet=True
    )
    out.unlink()
    print(json.dumps(stats.__dict__))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", default="10,60", help="comma-separated speech lengths")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--before", default=None, help="also run pipelines/generate.py at this git ref")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--codec", choices=("none", "vae"), default="none", help="pixel space or SD's VAE layout")
    parser.add_argument("--out", default="long_audio.json", help="results file name in bench/results/")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ref", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(SEED)
        model = FadaModel.from_config(cheap_config(args.size, args.codec))
        save_checkpoint(folder / "teacher", stage="teacher", mode="teacher",
                        config={"model": model.config.to_dict()}, components=model.components(), step=0)  # fmt: skip
        identity = demo_data.make_identity(0, args.size)
        alpha = identity.alpha[..., None]
        portrait = identity.person * alpha + identity.background * (1 - alpha)  # (S, S, 3) float RGB
        Image.fromarray(np.clip(np.rint(portrait), 0, 255).astype(np.uint8)).save(folder / "portrait.png")
        rows = []
        for ref in [args.before, None] if args.before else [None]:
            for seconds in [float(s) for s in args.seconds.split(",")]:
                command = [sys.executable, __file__, "--child", str(seconds), "--folder", tmp,
                           "--threads", str(args.threads)] + (["--ref", ref] if ref else [])  # fmt: skip
                started = time.perf_counter()
                run = subprocess.run(command, capture_output=True, text=True)
                if run.returncode:
                    sys.exit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
                stats = json.loads(run.stdout)
                row = {
                    "code": f"at {ref}" if ref else "working tree",
                    "audio_s": seconds,
                    "frames": stats["frames"],
                    "size": args.size,
                    "codec": args.codec,
                    "peak_rss_mb": round(stats["peak_memory_mb"], 1),
                    "wall_s": round(time.perf_counter() - started, 1),
                }
                rows.append(row)
                print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
