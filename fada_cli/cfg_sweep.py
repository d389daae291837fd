"""`fada cfg-sweep`: metrics against the audio and the reference CFG scale (the paper's Figs. 3 and 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fada_cli.evaluate import format_value
from fada_cli.options import (
    DeviceOption,
    ExpressionWeightsOption,
    I3dWeightsOption,
    InceptionWeightsOption,
    IqaMetricOption,
    JsonOption,
    QuietOption,
    R3dWeightsOption,
    SyncnetWeightsOption,
    eval_config,
)


def command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint to sample (teacher or student).")],
    reference: Annotated[
        Path, typer.Option("--reference", help="Held-out clips (folder or manifest): their speech drives the videos.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the videos, the table and the plots.")],
    image: Annotated[
        Path | None, typer.Option("--image", help="Portrait for every clip \\[each clip's first frame].")
    ] = None,
    audio_scales: Annotated[str, typer.Option("--audio-scales", help="Audio CFG scales.")] = "1,3.5,6.5,9",
    ref_scales: Annotated[str, typer.Option("--ref-scales", help="Reference CFG scales.")] = "1,1.5,2.5,3.5",
    steps: Annotated[int | None, typer.Option("--steps", help="Sampler steps \\[the checkpoint's].")] = None,
    max_videos: Annotated[
        int | None, typer.Option("--max-videos", help="Use at most N reference clips \\[all].")
    ] = None,
    syncnet_weights: SyncnetWeightsOption = None,
    inception_weights: InceptionWeightsOption = None,
    i3d_weights: I3dWeightsOption = None,
    r3d_weights: R3dWeightsOption = None,
    expression_weights: ExpressionWeightsOption = None,
    iqa_metric: IqaMetricOption = "qalign",
    device: DeviceOption = "cpu",
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Generate held-out clips over a grid of CFG scales and evaluate each point (the paper's Figs. 3 and 4).

    Each --reference clip's speech is generated from --checkpoint at every audio scale (reference
    scale at its default) and every reference scale (audio scale at its default); each point is
    evaluated as `fada eval` does. OUT gets cfg_sweep.parquet, cfg_sweep.json, cfg_audio.png and
    cfg_ref.png.

    Example:

        fada cfg-sweep --checkpoint runs/teacher --reference held_out.parquet --out sweep/
    """
    import pandas as pd

    from pipelines.cfg_sweep import SweepConfig, parse_scales, run_cfg_sweep
    from pipelines.generate import GenerateConfig

    config = eval_config(syncnet_weights, inception_weights, i3d_weights, r3d_weights, expression_weights,
                         iqa_metric, device)  # fmt: skip
    sweep = SweepConfig(
        audio_scales=parse_scales(audio_scales, "audio_scales"),
        ref_scales=parse_scales(ref_scales, "ref_scales"),
        generate=GenerateConfig(steps=steps, crop=image is not None),
        max_videos=max_videos,
    )
    table = run_cfg_sweep(checkpoint, reference, out, sweep, config, image=image, device=device, quiet=quiet)
    if as_json:
        typer.echo((out / "cfg_sweep.json").read_text())
        return
    columns = ["axis", "scale", "nfe", "sync_proxy", "e_fid_proxy", "iqa", "piqe", "sharpness", "fid", "fvd"]
    grid = Table(title=f"fada cfg-sweep: {checkpoint}")
    for column in columns:
        grid.add_column(column, justify="left" if column == "axis" else "right")
    for row in table.to_dict("records"):
        numbers = {c: None if pd.isna(row[c]) else float(row[c]) for c in columns[2:]}
        values = (format_value(numbers[c]) for c in columns[3:])
        grid.add_row(row["axis"], format_value(row["scale"]), str(row["nfe"]), *values)
    Console().print(grid)
    typer.echo(f"wrote {out / 'cfg_sweep.parquet'}, {out / 'cfg_audio.png'} and {out / 'cfg_ref.png'}")
