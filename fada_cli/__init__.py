"""The `fada` command-line interface (Typer)."""

__version__ = "0.1.0"
