"""`fada train-teacher`: train the dual-UNet teacher (ε-prediction, multi-CFG) on tier-A clips."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Train the dual-UNet teacher (ε-prediction, multi-CFG) on tier-A clips.

    Example:

        fada train-teacher --manifest curated/manifest.parquet --tier A --preset demo --out runs/teacher
    """
    raise NotImplementedYetError("`fada train-teacher` is not implemented yet in this release; see CHANGELOG.md for what is.")
