"""`fada generate`: generate a talking-portrait video from a portrait image and speech."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from fada_cli.options import DeviceOption, DtypeOption, JsonOption, QuietOption, SeedOption


def command(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", help="Checkpoint folder: a teacher or a fast/balanced student (`fada distill`)."),
    ],
    image: Annotated[Path, typer.Option("--image", help="Portrait image (PNG/JPEG, RGB, RGBA, grayscale; any size).")],
    audio: Annotated[Path, typer.Option("--audio", help="Speech (wav/flac/ogg/mp4…, any rate; read as 16 kHz mono).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .mp4; OUT.json with the stats goes beside it.")],
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Sampler steps per clip.", show_default="25 DDIM (teacher), 6 PeRFlow (student)"),
    ] = None,
    cfg_audio: Annotated[float, typer.Option("--cfg-audio", help="Audio guidance scale (multi-CFG, Eq. 9).")] = 6.5,
    cfg_ref: Annotated[
        float | None,
        typer.Option(
            "--cfg-ref",
            help="Reference guidance scale (multi-CFG, Eq. 9; CFG tokens, Eq. 10).",
            show_default="2.5; 2.0 for a fast (CFG-distilled) student",
        ),
    ] = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    frames_per_clip: Annotated[
        int | None,
        typer.Option("--frames-per-clip", help="Frames per generated clip.", show_default="from checkpoint"),
    ] = None,
    motion_frames: Annotated[
        int | None,
        typer.Option("--motion-frames", help="Previous frames carried into each clip.", show_default="from checkpoint"),
    ] = None,
    no_crop: Annotated[
        bool, typer.Option("--no-crop", help="Skip face detection; use the centre square of the image.")
    ] = False,
    crop_scale: Annotated[float, typer.Option("--crop-scale", help="Crop side as a multiple of the face size.")] = 1.6,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Write OUT.mp4 as a fragmented mp4 that grows clip by clip (a player can open it while it grows).",
        ),
    ] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Generate a talking-portrait video from a portrait image and speech.

    The face is detected and cropped, the speech drives the mouth clip by clip, and the speech is
    muxed into the mp4. OUT.json beside the video records nfe (denoising-net evaluations per
    clip: 25 DDIM steps × 3 CFG branches = 75 for a teacher, 6 PeRFlow steps × 3 = 18 for a
    balanced student, 6 × 1 = 6 for a fast one), seconds, the first-clip latency, frames and peak memory.
    With --stream the mp4 is a fragmented mp4 written in place, one fragment per clip, that a
    player can open while it grows.

    Example:

        fada generate --checkpoint runs/teacher --image face.png --audio speech.wav -o out/talk.mp4
    """
    from pipelines.generate import GenerateConfig, stats_path  # heavy: imported on use
    from pipelines.pipeline import generate

    config = GenerateConfig(
        steps=steps,
        cfg_audio=cfg_audio,
        cfg_ref=cfg_ref,
        seed=seed,
        frames_per_clip=frames_per_clip,
        motion_frames=motion_frames,
        crop=not no_crop,
        crop_scale=crop_scale,
    )
    stats = generate(checkpoint, image, audio, out, config, device=device, dtype=dtype, quiet=quiet, stream=stream)
    if as_json:
        typer.echo(json.dumps(asdict(stats), indent=2))
        return
    typer.echo(f"wrote {stats.video} ({stats.frames} frames, {stats.audio_seconds:.2f} s at {stats.fps} fps)")
    typer.echo(f"stats {stats_path(Path(stats.video))}")
    typer.echo(
        f"{stats.stage} {stats.sampler}: {stats.steps} steps, nfe {stats.nfe} per clip × {stats.clips} clips, "
        f"cfg audio {stats.cfg_audio} ref {stats.cfg_ref}"
    )
    typer.echo(
        f"{stats.seconds:.1f} s ({stats.seconds_per_video_second:.2f} s per video second; first clip after "
        f"{stats.first_clip_seconds:.1f} s; load {stats.load_seconds:.1f} s) on {stats.device}, "
        f"peak memory {stats.peak_memory_mb:.0f} MB ({stats.peak_memory_source})"
    )
