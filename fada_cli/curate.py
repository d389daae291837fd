"""`fada curate`: score raw talking-head videos and sort clips into tiers A ⊂ B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fada_cli.options import JsonOption, QuietOption
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.curate import CurateSummary


def print_summary(summary: CurateSummary) -> None:
    """The final table on stdout: clips per tier, reject reasons, throughput."""
    table = Table(title=f"fada curate → {summary.manifest}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for tier, count in summary.tiers.items():
        table.add_row(f"tier {tier}", str(count))
    for reason, count in summary.reasons.items():
        table.add_row(f"  rejected: {reason}", str(count))
    table.add_row("new rows (this run)", str(summary.new_rows))
    table.add_row("sources skipped (resume)", str(summary.skipped_sources))
    table.add_row("video scored (s)", f"{summary.video_seconds:.1f}")
    table.add_row("wall time (s)", f"{summary.wall_seconds:.1f}")
    table.add_row("video s / wall s", f"{summary.seconds_per_second:.2f}")
    Console().print(table)


def command(
    inputs: Annotated[list[Path], typer.Argument(help="Video files, folders (recursive) or .txt lists of paths.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: clips/, manifest.parquet, thresholds.yaml.")],
    size: Annotated[int, typer.Option("--size", help="Side of the square face crop (pixels).")] = 512,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Shortest clip kept (s).")] = 2.0,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Longest clip; longer shots are split.")] = 10.0,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes (local engine), or the CPUs of a local Ray.")
    ] = 1,
    engine: Annotated[
        str, typer.Option("--engine", help="Where sources run: `local` (process pool) or `ray` (a Ray task each).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster to join (e.g. `auto`, `ray://head:10001`); none: a local Ray."),
    ] = None,
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            help="Seconds to wait for --ray-address to answer before failing (a refused connection fails at once).",
        ),
    ] = 15.0,
    thresholds: Annotated[
        Path | None, typer.Option("--thresholds", help="YAML/TOML file with `strict` (A) and `lenient` (B) checks.")
    ] = None,
    syncnet_weights: Annotated[
        Path | None, typer.Option("--syncnet-weights", help="SyncNet syncnet_v2.model; without it sync_* are NaN.")
    ] = None,
    iqa_metric: Annotated[
        str,
        typer.Option(
            "--iqa-metric",
            help="The iqa column: brisque (built in), or a learned metric read from the local cache only (qalign, "
            "or a pyiqa metric in pyiqa's cache); 'none' to skip.",
        ),
    ] = "brisque",
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Keep the manifest and the parts of an interrupted run; skip clips in them."),
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Score raw talking-head videos and sort clips into tiers A ⊂ B.

    Example:

        fada curate raw_videos/ --out curated/ --size 512 --workers 4

        fada curate /shared/raw/ --out /shared/curated/ --engine ray --ray-address auto
    """
    from filters.base import ScoringSettings  # mediapipe, OpenCV and Ray only when curation runs
    from filters.tiers import load_thresholds
    from pipelines.curate import CurateConfig, run_curate

    if syncnet_weights is not None and not syncnet_weights.is_file():
        raise UsageError(f"--syncnet-weights {syncnet_weights} is not a file; pass the path of syncnet_v2.model.")
    config = CurateConfig(
        size=size,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        workers=workers,
        engine=engine,
        ray_address=ray_address,
        connect_timeout=connect_timeout,
        thresholds=load_thresholds(thresholds),
        scoring=ScoringSettings(
            syncnet_weights=syncnet_weights, iqa_metric=None if iqa_metric.lower() == "none" else iqa_metric
        ),
    )
    summary = run_curate(inputs, out, config, resume=resume, quiet=quiet)
    if json_output:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        print_summary(summary)
