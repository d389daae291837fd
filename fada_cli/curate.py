"""`fada curate`: score raw talking-head videos and sort clips into tiers A ⊂ B."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Score raw talking-head videos and sort clips into tiers A ⊂ B.

    Example:

        fada curate raw_videos/ --out curated/ --size 512 --workers 4
    """
    raise NotImplementedYetError("`fada curate` is not implemented yet in this release; see CHANGELOG.md for what is.")
