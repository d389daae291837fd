"""`fada eval`: evaluate generated videos against references (IQA = BRISQUE, Q-Align, PIQE, PSNR/SSIM/LPIPS,
Sync-D/C, FID, FVD, E-FID, NFE-D and the weight-free proxies)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

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
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.evaluate import EvalReport


def format_value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def metrics_table(report: EvalReport) -> Table:
    """The report as a Rich table: one row per metric (metrics.json has every field in full)."""
    table = Table(title=f"fada eval: {report.pairs} generated / reference pairs")
    table.add_column("metric", no_wrap=True)
    table.add_column("generated", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("N gen / ref")
    table.add_column("extractor (sha256), route")
    table.add_column("status")
    for m in report.metrics:
        arrow = {"lower": " ↓", "higher": " ↑"}.get(m.better, "")
        extractor = (m.extractor or "—") + (f" ({m.extractor_sha256[:8]})" if m.extractor_sha256 else "")
        extractor += f", {m.route}" if m.route else ""  # proxies: face mesh or mouth window
        status = {"ok": "ok", "unavailable": f"unavailable: needs {m.enable}"}.get(m.status, m.status)
        table.add_row(
            m.name + arrow,
            format_value(m.value),
            format_value(m.reference_value),
            "—" if m.status == "unavailable" else f"{m.n} / {m.n_reference} {m.unit}",
            extractor,
            status + (f": {m.note}" if m.note and m.status != "unavailable" else ""),
        )
    return table


def command(
    reference: Annotated[
        Path, typer.Option("--reference", help="Ground-truth videos (folder or manifest), paired by file stem.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json and per_video.parquet.")],
    generated: Annotated[
        Path | None, typer.Option("--generated", help="Generated videos: a folder of mp4 files or a clip manifest.")
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
    """Evaluate generated videos against references (IQA, Sync-D/C, FID, FVD, FVD-R, E-FID, NFE-D).

    Videos pair by file stem (gen/abc.mp4 ↔ ref/abc.mp4). NFE-D is read from the stats JSON that
    `fada generate` writes beside each video. Always computed: iqa (BRISQUE at the frames' own
    size, lower is better; its model ships with fada), PIQE (pyiqa, lower is better), sharpness
    (not an IQA), PSNR and SSIM of each pair, and the weight-free *_proxy rows (sync, E-FID),
    which read the face with the face mesh or, where it fails on small or noisy frames, through a
    mouth window found once and followed (the row names its route). Learned metrics (Q-Align,
    LPIPS, SyncNet, FID, ...) need their weights and are otherwise reported as unavailable with
    what enables them; nothing is downloaded and a proxy never stands in for them. pyiqa (PIQE,
    PSNR, SSIM, LPIPS, Q-Align) is licensed for noncommercial use only. The extractor contracts
    are documented in pipelines/metrics/extractors.py. `fada cfg-sweep` generates and evaluates
    over a grid of CFG scales.

    Example:

        fada eval --generated gen/ --reference data/manifest.parquet --out metrics/ --syncnet-weights syncnet_v2.model
    """
    from pipelines.evaluate import evaluate, report_payload  # heavy: imported on use

    if generated is None:
        raise UsageError("`generated` is missing; pass the generated videos (or use `fada cfg-sweep`).")
    config = eval_config(syncnet_weights, inception_weights, i3d_weights, r3d_weights, expression_weights,
                         iqa_metric, device)  # fmt: skip
    report = evaluate(generated, reference, out, config, quiet=quiet)
    if as_json:
        typer.echo(json.dumps(report_payload(report, generated, reference, config), indent=2))
        return
    Console().print(metrics_table(report))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'per_video.parquet'}")
