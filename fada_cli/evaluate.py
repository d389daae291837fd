"""`fada eval`: evaluate generated videos against references (IQA, Sync-D/C, FID, FVD, E-FID, NFE-D)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fada_cli.options import DeviceOption, JsonOption, QuietOption
from pipelines.evaluate import EvalConfig, EvalReport, evaluate, report_payload


def _format(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def metrics_table(report: EvalReport) -> Table:
    """The report as a Rich table: one row per metric (metrics.json has every field in full)."""
    table = Table(title=f"fada eval: {report.pairs} generated / reference pairs")
    table.add_column("metric", no_wrap=True)
    table.add_column("generated", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("N gen / ref")
    table.add_column("extractor (sha256)")
    table.add_column("status")
    for m in report.metrics:
        arrow = {"lower": " ↓", "higher": " ↑"}.get(m.better, "")
        extractor = (m.extractor or "—") + (f" ({m.extractor_sha256[:8]})" if m.extractor_sha256 else "")
        status = {"ok": "ok", "unavailable": f"needs {m.enable}"}.get(m.status, m.status)
        table.add_row(
            m.name + arrow,
            _format(m.value),
            _format(m.reference_value),
            "—" if m.status == "unavailable" else f"{m.n} / {m.n_reference} {m.unit}",
            extractor,
            status + (f": {m.note}" if m.note and m.status != "unavailable" else ""),
        )
    return table


def command(
    generated: Annotated[
        Path, typer.Option("--generated", help="Generated videos: a folder of mp4 files or a clip manifest.")
    ],
    reference: Annotated[
        Path, typer.Option("--reference", help="Ground-truth videos (folder or manifest), paired by file stem.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json and per_video.parquet.")],
    syncnet_weights: Annotated[
        Path | None, typer.Option("--syncnet-weights", help="SyncNet syncnet_v2.model → Sync-D / Sync-C.")
    ] = None,
    inception_weights: Annotated[
        Path | None, typer.Option("--inception-weights", help="Inception TorchScript (clean-fid) → FID.")
    ] = None,
    i3d_weights: Annotated[
        Path | None, typer.Option("--i3d-weights", help="I3D TorchScript (StyleGAN-V) → FVD.")
    ] = None,
    r3d_weights: Annotated[Path | None, typer.Option("--r3d-weights", help="3D-ResNet TorchScript → FVD-R.")] = None,
    expression_weights: Annotated[
        Path | None, typer.Option("--expression-weights", help="Expression-coefficient TorchScript → E-FID.")
    ] = None,
    iqa_metric: Annotated[
        str, typer.Option("--iqa-metric", help="pyiqa metric whose weights are in pyiqa's cache; 'none' to skip.")
    ] = "musiq",
    device: DeviceOption = "cpu",
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate generated videos against references (IQA, Sync-D/C, FID, FVD, FVD-R, E-FID, NFE-D).

    Videos pair by file stem (gen/abc.mp4 ↔ ref/abc.mp4). NFE-D is read from the stats JSON that
    `fada generate` writes beside each video. Learned metrics need their weights file and are
    otherwise reported as unavailable with the option that enables them; the weight-free
    *_proxy rows (sync, E-FID, IQA) are always computed and never stand in for them. The
    extractor contracts are documented in pipelines/metrics/extractors.py.

    Example:

        fada eval --generated gen/ --reference data/manifest.parquet --out metrics/ --syncnet-weights syncnet_v2.model
    """
    config = EvalConfig(
        syncnet_weights=syncnet_weights,
        inception_weights=inception_weights,
        i3d_weights=i3d_weights,
        r3d_weights=r3d_weights,
        expression_weights=expression_weights,
        iqa_metric=None if iqa_metric.strip().lower() in ("", "none") else iqa_metric,
        device=device,
    )
    report = evaluate(generated, reference, out, config, quiet=quiet)
    if as_json:
        typer.echo(json.dumps(report_payload(report, generated, reference, config), indent=2))
        return
    Console().print(metrics_table(report))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'per_video.parquet'}")
