"""`fada demo-data`: write the embedded demo talking-portrait dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fada_cli.options import QuietOption, SeedOption
from pipelines.demo_data import DemoDataConfig, generate_demo_data


def command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (new, empty, or a previous demo-data output).")],
    clips: Annotated[int, typer.Option("--clips", help="Number of clips.")] = DemoDataConfig.clips,
    identities: Annotated[int, typer.Option("--identities", help="Number of distinct people (1-6).")] = (
        DemoDataConfig.identities
    ),
    size: Annotated[int, typer.Option("--size", help="Square frame side in pixels (64-512).")] = DemoDataConfig.size,
    seconds: Annotated[float, typer.Option("--seconds", help="Clip length in seconds (1-10).")] = (
        DemoDataConfig.seconds
    ),
    seed: SeedOption = DemoDataConfig.seed,
    quiet: QuietOption = False,
) -> None:
    """Write a small talking-portrait dataset with known ground truth.

    Clips (mp4, H.264 + AAC, 25 fps) show several identities whose mouth opens with synthetic
    speech, with head motion and controlled defects (audio/video offset, strong motion, blur,
    noise, background flicker). Writes OUT_DIR/clips/, OUT_DIR/truth.parquet and
    OUT_DIR/manifest.parquet (tier A = clean, B = mild defects, reject = severe).

    Example:

        fada demo-data demo_data --clips 24 --size 128
    """
    config = DemoDataConfig(clips=clips, identities=identities, size=size, seconds=seconds, seed=seed)
    truth = generate_demo_data(out_dir, config, quiet=quiet)
    tiers = truth["tier"].value_counts()
    typer.echo(
        f"wrote {len(truth)} clips to {out_dir}: "
        + ", ".join(f"tier {tier} {int(tiers.get(tier, 0))}" for tier in ("A", "B", "reject"))
    )
