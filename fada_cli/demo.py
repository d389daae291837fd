"""`fada demo`: run the whole lifecycle on the embedded demo dataset, on CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fada_cli.options import DeviceOption, JsonOption, QuietOption, SeedOption


def _format(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def demo_table(summary: dict) -> Table:
    """One row per mode: NFE, s per video s, speed-up, face rate, identity, mouth r (speech / reversed),
    sync / E-FID proxies, IQA (BRISQUE).


    The caption gives the identity anchors (the real clip's ceiling, the nearest other face's floor), the
    targets met, and how the proxies read the face (face mesh or mouth window) in each mode.
    """
    stages = summary["teacher"]["stages"]
    steps = "teacher " + " + ".join(f"{row['steps']} {stage}" for stage, row in stages.items()) + " steps"
    routes = {mode: row.get("routes", {}).get("sync_proxy", "—") for mode, row in summary["modes"].items()}
    lines = []
    first = next(iter(summary["modes"].values()))
    if first.get("identity_psnr16_ceiling") is not None:
        lines.append(
            f"identity: 16×16 PSNR against the portrait, 0 = the nearest other face "
            f"({first['identity_psnr16_floor']:.1f} dB), 1 = the real clip ({first['identity_psnr16_ceiling']:.1f} dB)"
        )
    lines.append("mouth r: mouth darkness vs speech energy; r rev: the same, driven by the speech reversed")
    lines.append("sync, E-FID: weight-free proxies")
    for mode, checks in summary.get("targets_met", {}).items():
        missed = [name for name, ok in checks.items() if not ok]
        lines.append(f"{mode}: " + ("every target met" if not missed else "targets missed: " + ", ".join(missed)))
    lines.append("proxies read the face by " + (
        next(iter(routes.values()))
        if len(set(routes.values())) == 1
        else ", ".join(f"{m}: {r}" for m, r in routes.items())
    ))  # fmt: skip
    table = Table(title=f"fada demo ({summary['model_preset']} preset, {steps})", caption="\n".join(lines))
    for name in ("mode", "NFE", "s/vid s", "speed-up", "face↑", "identity↑", "ΔE↓", "mouth r↑", "r rev",
                 "sync↑", "E-FID↓", "BRISQUE↓"):  # fmt: skip
        table.add_column(name, justify="left" if name == "mode" else "right", min_width=8 if name == "mode" else None)
    for mode, row in summary["modes"].items():
        table.add_row(
            mode,
            str(row["nfe"]),
            _format(row["seconds_per_video_second"], ".2f"),
            _format(row["speed_up"], ".2f") + "×",
            _format(row.get("face_rate"), ".0%"),
            _format(row.get("identity_fraction"), ".2f"),
            _format(row.get("identity_colour_de"), ".1f"),
            _format(row.get("mouth_r"), ".2f"),
            _format(row.get("mouth_r_reversed"), ".2f"),
            _format(row["sync_proxy"], ".2f"),
            _format(row["e_fid_proxy"], ".3g"),
            _format(row.get("iqa"), ".1f"),
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
            help="Wall-clock budget of the whole run, from the command's start; training gets what the other "
            "steps leave.",
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

    demo-data → curate → train-teacher (one identity held out; one joint stage of the demo recipe) →
    distill (fast and balanced) → generate the held-out identity speaking its held-out speech, and
    the same speech reversed in time → eval against the real clip. Ends with a table per mode (NFE,
    seconds per video second, speed-up, share of frames with a face found, identity against the
    portrait, mouth-vs-speech r forward and reversed, sync / E-FID proxies, BRISQUE), the targets
    met, a contact sheet PNG and OUT/demo_summary.json. The teacher keeps at least half the budget;
    on a slow machine the videos get shorter and the teacher samples fewer DDIM steps (25, 15, 10, 6)
    unless --generate-steps says otherwise.

    Example:

        fada demo --out demo_run                 # 15 minutes

        fada demo --out demo_run --minutes 25    # a longer teacher and students
    """
    started = time.time()  # the budget counts the imports below too
    from pipelines.demo import SUMMARY, DemoConfig, run_demo  # torch and diffusers: only when the demo runs

    summary = run_demo(
        out,
        DemoConfig(minutes=minutes, preset=preset, seed=seed, generate_steps=generate_steps),
        device=device,
        quiet=quiet,
        started=started,
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    Console().print(demo_table(summary))
    typer.echo(f"contact sheet {summary['contact_sheet']}")
    for mode, row in summary["modes"].items():
        typer.echo(f"{mode} videos: {', '.join(row['videos'])}")
    typer.echo(f"summary {Path(summary['out']) / SUMMARY} ({summary['total_s']:.0f} s of {summary['budget_s']:.0f} s)")
