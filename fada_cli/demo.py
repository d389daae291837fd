"""`fada demo`: run the whole lifecycle on the embedded demo dataset, on CPU."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Run the whole lifecycle on the embedded demo dataset, on CPU.

    Example:

        fada demo --out demo_run
    """
    raise NotImplementedYetError("`fada demo` is not implemented yet in this release; see CHANGELOG.md for what is.")
