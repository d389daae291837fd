"""`fada distill`: distill a teacher into a 6-step student with PeRFlow, mixed supervision and CFG tokens."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Distill a teacher into a 6-step student with PeRFlow, mixed supervision and CFG tokens.

    Example:

        fada distill --teacher runs/teacher --manifest curated/manifest.parquet --tier B --mode fast --out runs/student
    """
    raise NotImplementedYetError("`fada distill` is not implemented yet in this release; see CHANGELOG.md for what is.")
