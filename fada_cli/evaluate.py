"""`fada eval`: evaluate generated videos against references (IQA, Sync-D/C, FID, FVD, E-FID, NFE-D)."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Evaluate generated videos against references (IQA, Sync-D/C, FID, FVD, E-FID, NFE-D).

    Example:

        fada eval --generated gen/ --reference ref/ --out metrics/
    """
    raise NotImplementedYetError("`fada eval` is not implemented yet in this release; see CHANGELOG.md for what is.")
