"""`fada eval`: evaluate generated videos against references (IQA = BRISQUE, Q-Align, PIQE, PSNR/SSIM/LPIPS,
Sync-D/C, FID, FVD, E-FID, NFE-D and the weight-free proxies)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fada_cli.options import DeviceOption, JsonOption, QuietOption
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.evaluate import EvalReport


def _format(value: float | None) -> str:
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
            _format(m.value),
            _format(m.reference_value),
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
        str,
        typer.Option(
            "--iqa-metric",
            help="Learned IQA row beside BRISQUE, read from the local cache only: qalign (the paper's Q-Align, "
            "Hugging Face cache) or a pyiqa metric in pyiqa's cache; 'none' to skip.",
        ),
    ] = "qalign",
    device: DeviceOption = "cpu",
    cfg_sweep: Annotated[
        bool, typer.Option("--cfg-sweep", help="Generate --reference's clips over a CFG grid; plot metric vs scale.")
    ] = False,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="--cfg-sweep: checkpoint to sample.")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="--cfg-sweep: portrait for every clip \\[each clip's first frame].")
    ] = None,
    audio_scales: Annotated[str, typer.Option("--audio-scales", help="--cfg-sweep: audio CFG scales.")] = "1,3.5,6.5,9",
    ref_scales: Annotated[
        str, typer.Option("--ref-scales", help="--cfg-sweep: reference CFG scales.")
    ] = "1,1.5,2.5,3.5",
    steps: Annotated[
        int | None, typer.Option("--steps", help="--cfg-sweep: sampler steps \\[the checkpoint's].")
    ] = None,
    max_videos: Annotated[
        int | None, typer.Option("--max-videos", help="--cfg-sweep: use at most N reference clips \\[all].")
    ] = None,
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
    are documented in pipelines/metrics/extractors.py.

    Example:

        fada eval --generated gen/ --reference data/manifest.parquet --out metrics/ --syncnet-weights syncnet_v2.model

    With --cfg-sweep (the paper's Figs. 3 and 4), each --reference clip's speech is generated from
    --checkpoint at every audio scale (reference scale at its default) and every reference scale
    (audio scale at its default); each point is evaluated as above; OUT gets cfg_sweep.parquet,
    cfg_sweep.json, cfg_audio.png and cfg_ref.png:

        fada eval --cfg-sweep --checkpoint runs/teacher --reference held_out.parquet --out sweep/
    """
    from pipelines.evaluate import EvalConfig, evaluate, report_payload  # heavy: imported on use

    config = EvalConfig(
        syncnet_weights=syncnet_weights,
        inception_weights=inception_weights,
        i3d_weights=i3d_weights,
        r3d_weights=r3d_weights,
        expression_weights=expression_weights,
        iqa_metric=None if iqa_metric.strip().lower() in ("", "none") else iqa_metric,
        device=device,
    )
    if cfg_sweep:
        _run_cfg_sweep(checkpoint, reference, out, config, image, audio_scales, ref_scales, steps, max_videos, quiet,
                       as_json)  # fmt: skip
        return
    if generated is None:
        raise UsageError("--generated is missing; pass the generated videos (or --cfg-sweep with --checkpoint).")
    report = evaluate(generated, reference, out, config, quiet=quiet)
    if as_json:
        typer.echo(json.dumps(report_payload(report, generated, reference, config), indent=2))
        return
    Console().print(metrics_table(report))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'per_video.parquet'}")


def _run_cfg_sweep(checkpoint, reference, out, config, image, audio_scales, ref_scales, steps, max_videos, quiet,
                   as_json) -> None:  # fmt: skip
    """`--cfg-sweep`: parse the grid, run `pipelines.cfg_sweep`, print the table."""
    import pandas as pd

    from pipelines.cfg_sweep import SweepConfig, parse_scales, run_cfg_sweep
    from pipelines.generate import GenerateConfig

    if checkpoint is None:
        raise UsageError("--cfg-sweep needs --checkpoint CKPT (a folder written by `fada train-teacher`).")
    sweep = SweepConfig(
        audio_scales=parse_scales(audio_scales, "--audio-scales"),
        ref_scales=parse_scales(ref_scales, "--ref-scales"),
        generate=GenerateConfig(steps=steps, crop=image is not None),
        max_videos=max_videos,
    )
    table = run_cfg_sweep(checkpoint, reference, out, sweep, config, image=image, device=config.device, quiet=quiet)
    if as_json:
        typer.echo((out / "cfg_sweep.json").read_text())
        return
    columns = ["axis", "scale", "nfe", "sync_proxy", "e_fid_proxy", "iqa", "piqe", "sharpness", "fid", "fvd"]
    grid = Table(title=f"fada eval --cfg-sweep: {checkpoint}")
    for column in columns:
        grid.add_column(column, justify="left" if column == "axis" else "right")
    for row in table.to_dict("records"):
        numbers = {c: None if pd.isna(row[c]) else float(row[c]) for c in columns[2:]}
        grid.add_row(row["axis"], _format(row["scale"]), str(row["nfe"]), *(_format(numbers[c]) for c in columns[3:]))
    Console().print(grid)
    typer.echo(f"wrote {out / 'cfg_sweep.parquet'}, {out / 'cfg_audio.png'} and {out / 'cfg_ref.png'}")
