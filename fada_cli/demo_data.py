"""`fada demo-data`: write the embedded demo talking-portrait dataset."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Write a small talking-portrait dataset with known ground truth.

    Example:

        fada demo-data demo_data --clips 24 --size 128
    """
    raise NotImplementedYetError("`fada demo-data` is not implemented yet.")
