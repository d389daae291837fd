"""`fada demo`: run the whole lifecycle on the embedded demo dataset, on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fada_cli.options import DeviceOption, JsonOption, QuietOption, SeedOption


def _format(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def demo_table(summary: dict) -> Table:
    """One row per mode: NFE, s per video s, speed-up, face rate, sync / E-FID proxies, IQA (BRISQUE), PIQE, PSNR.

    The caption says how the proxies read the face (face mesh or mouth window) in each mode.
    """
    stages = summary["teacher"]["stages"]
    steps = f"teacher {stages['image']['steps']} image + {stages['video']['steps']} video steps"
    routes = {mode: row.get("routes", {}).get("sync_proxy", "—") for mode, row in summary["modes"].items()}
    caption = "proxies read the face by " + (
        next(iter(routes.values()))
        if len(set(routes.values())) == 1
        else ", ".join(f"{m}: {r}" for m, r in routes.items())
    )
    table = Table(title=f"fada demo ({summary['model_preset']} preset, {steps})", caption=caption)
    for name in ("mode", "NFE", "s / video s", "speed-up", "face ↑", "sync proxy ↑", "|lag| ↓", "E-FID proxy ↓",
                 "BRISQUE ↓", "PIQE ↓", "PSNR ↑"):  # fmt: skip
        table.add_column(name, justify="left" if name == "mode" else "right", min_width=8 if name == "mode" else None)
    for mode, row in summary["modes"].items():
        table.add_row(
            mode,
            str(row["nfe"]),
            _format(row["seconds_per_video_second"], ".2f"),
            _format(row["speed_up"], ".2f") + "×",
            _format(row.get("face_rate"), ".0%"),
            _format(row["sync_proxy"], ".2f"),
            _format(row.get("sync_proxy_offset"), ".0f"),
            _format(row["e_fid_proxy"], ".3g"),
            _format(row.get("iqa"), ".1f"),
            _format(row.get("piqe"), ".0f"),
            _format(row.get("psnr"), ".1f"),
        )
    return table


def command(
    out: Annotated[Path, typer.Option("--out", help="Run folder (new, empty, or a previous demo run).")] = Path(
        "demo_run"
    ),
    minutes: Annotated[
        float,
        typer.Option(
            "--minutes",
            help="Wall-clock budget; training gets what is left. 15 shows the lifecycle; on a 2-core CPU the "
            "teacher draws faces from about 30.",
        ),
    ] = 15.0,
    preset: Annotated[
        str, typer.Option("--preset", help="Model preset: demo (CPU minutes) or tiny (seconds).")
    ] = "demo",
    generate_steps: Annotated[
        int | None,
        typer.Option("--generate-steps", help="Teacher DDIM steps; fewer is faster (the table shows the NFE)."),
    ] = None,
    device: DeviceOption = "cpu",
    seed: SeedOption = 0,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run the whole lifecycle on the embedded demo dataset, on CPU.

    demo-data → curate → train-teacher (one identity held out; image stage, then video stage) →
    distill (fast and balanced) → generate
    the held-out identity speaking its held-out clips → eval against those clips. Ends with a
    table per mode (NFE, seconds per video second, speed-up, share of frames with a face found,
    sync / E-FID / IQA proxies), a
    contact sheet PNG and OUT/demo_summary.json. The teacher samples with 25 DDIM steps × 3 CFG
    branches (NFE 75) unless --generate-steps says otherwise.

    Example:

        fada demo --out demo_run --minutes 15

        fada demo --out demo_run --minutes 30   # long enough for the videos to show faces
    """
    from pipelines.demo import SUMMARY, DemoConfig, run_demo  # torch and diffusers: only when the demo runs

    summary = run_demo(
        out,
        DemoConfig(minutes=minutes, preset=preset, seed=seed, generate_steps=generate_steps),
        device=device,
        quiet=quiet,
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    Console().print(demo_table(summary))
    typer.echo(f"contact sheet {summary['contact_sheet']}")
    for mode, row in summary["modes"].items():
        typer.echo(f"{mode} videos: {', '.join(row['videos'])}")
    typer.echo(f"summary {Path(summary['out']) / SUMMARY} ({summary['total_s']:.0f} s of {summary['budget_s']:.0f} s)")
