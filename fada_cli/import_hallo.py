"""`fada import hallo`: an existing teacher (Hallo/Hallo2's released checkpoint) as a fada teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fada_cli.options import JsonOption, OverwriteOption, QuietOption


def command(
    pretrained: Annotated[
        Path, typer.Argument(help="Hallo's pretrained_models folder (hallo/net.pth, stable-diffusion-v1-5/unet, …).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Teacher checkpoint folder to write.")],
    identity: Annotated[
        str,
        typer.Option(
            "--identity",
            help="Face embedding: insightface (the folder's face_analysis/, non-commercial models) or none (the "
            "null identity for every portrait).",
        ),
    ] = "insightface",
    frames_per_clip: Annotated[
        int, typer.Option("--frames-per-clip", help="F recorded in the teacher (Hallo samples 16).")
    ] = 16,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import Hallo's (or Hallo2's) released checkpoint as a fada teacher.

    Every key of hallo/net.pth is mapped onto fada's hallo family (an unknown or missing key is an
    error naming it); net.pth is read with torch.load(weights_only=True) and the teacher is written
    as safetensors + JSON. Then `fada distill --teacher OUT` and `fada generate --checkpoint OUT`
    (Hallo's sampler: --steps 40 --cfg-audio 3.5 --cfg-ref 3.5) work as for any teacher.

    Example:

        fada import hallo pretrained_models --out runs/hallo-teacher
    """
    from pipelines.hallo import import_hallo  # heavy: imported on use
    from pipelines.info import summarize_checkpoint
    from pipelines.progress import log

    log(f"importing {pretrained / 'hallo' / 'net.pth'} …", quiet=quiet)
    path = import_hallo(pretrained, out, identity=identity, frames_per_clip=frames_per_clip, overwrite=overwrite)
    summary = summarize_checkpoint(path)
    result = {"checkpoint": str(path), "hash": summary.hash, "source": summary.source, "preset": summary.preset}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"wrote teacher {path} (hash {summary.hash}) from {summary.source}")
