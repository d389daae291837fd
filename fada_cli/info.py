"""`fada info`: a checkpoint's stage, mode, sampler, NFE, hashes and weight sources."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from fada_cli.options import JsonOption


def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (teacher or student).")],
    as_json: JsonOption = False,
) -> None:
    """Show what a checkpoint is: stage(s), mode, preset, step, sampler and NFE per clip, hashes, weights.

    The weights are not loaded; the folder's files are hashed (checkpoint_hash, the value a student
    records as teacher_hash), and a student's recorded teacher is re-hashed when its folder exists.

    Example:

        fada info runs/demo/student_fast --json
    """
    from pipelines.info import summarize_checkpoint  # heavy: imported on use

    summary = summarize_checkpoint(checkpoint)
    if as_json:
        typer.echo(json.dumps(asdict(summary), indent=2))
        return
    stages = " → ".join(f"{s['stage']} ({s['steps']} steps)" for s in summary.stages)
    typer.echo(f"{summary.path}: {summary.stage} checkpoint, mode {summary.mode}, preset {summary.preset}, "
               f"step {summary.step} (format {summary.format_version})")  # fmt: skip
    if summary.stage == "teacher":
        typer.echo(f"stages      {stages}")
    typer.echo(f"model       {summary.sample_size} px, F {summary.frames_per_clip}, M {summary.motion_frames}")
    typer.echo(f"sampler     {summary.sampler}: {summary.default_steps} steps, NFE {summary.nfe_per_clip} per clip, "
               f"cfg ref {summary.default_cfg_ref}")  # fmt: skip
    typer.echo(f"hash        {summary.hash}")
    typer.echo(f"source      {summary.source}")
    if summary.stage == "student":
        match = {True: "matches", False: "DIFFERS", None: "not found to check"}[summary.teacher_matches]
        typer.echo(f"teacher     {summary.teacher_hash} at {summary.teacher_path} ({match})")
    typer.echo(f"manifest    {summary.manifest_hash or '—'}")
    for weight in summary.weights:
        typer.echo(f"weights     {weight.name}: {weight.source} ({weight.files} files, {weight.megabytes:.2f} MB)")
    typer.echo(f"resumable   {'yes' if summary.has_training_state else 'no (inference only)'}")
