"""The `fada` Typer app: every subcommand is registered here, and here alone user errors
become a one-line ``Error: …`` on stderr with an exit code (1, or 2 for usage).

Set ``FADA_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from fada_cli import curate, demo, demo_data, distill, evaluate, generate, import_hallo, info, serve, train_teacher
from pipelines.errors import FadaError

app = typer.Typer(
    name="fada",
    help=(
        "Fast audio-driven talking-portrait diffusion (FADA, arXiv 2412.16915).\n\n"
        "Lifecycle: demo-data → curate → train-teacher (or import hallo) → distill → generate → eval."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def debug_enabled() -> bool:
    return os.environ.get("FADA_DEBUG", "").strip() not in ("", "0", "false", "no")


def report_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a subcommand so a `FadaError` becomes ``Error: …`` on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FadaError as error:
            if debug_enabled():
                raise
            message = " ".join(str(error).split())
            typer.echo(f"Error: {message}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None

    return wrapper


def help_text(docstring: str) -> str:
    """A command docstring as help: prose paragraphs joined into one line each (Rich wraps them to
    the terminal), indented paragraphs (examples) kept line by line."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(p if p.startswith(" ") else " ".join(p.split("\n")) for p in paragraphs)


def _register(name: str, command: Callable[..., Any]) -> None:
    app.command(name, help=help_text(command.__doc__ or ""))(report_errors(command))


_register("demo-data", demo_data.command)
_register("curate", curate.command)
_register("train-teacher", train_teacher.command)
_register("distill", distill.command)
_register("generate", generate.command)
_register("eval", evaluate.command)
_register("demo", demo.command)
_register("info", info.command)
_register("serve", serve.command)

import_app = typer.Typer(name="import", help="Import an existing teacher (Hallo/Hallo2) as a fada checkpoint.",
                         no_args_is_help=True, add_completion=False)  # fmt: skip
import_app.command("hallo", help=help_text(import_hallo.command.__doc__ or ""))(report_errors(import_hallo.command))
app.add_typer(import_app, name="import")


def _show_version(value: bool) -> None:
    if value:
        from fada_cli import __version__

        typer.echo(f"fada {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Show fada's version and exit.", is_eager=True, callback=_show_version
    ),
) -> None:
    """Fast audio-driven talking-portrait diffusion (FADA, arXiv 2412.16915).

    Lifecycle: demo-data → curate → train-teacher → distill → generate → eval.
    """


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except FadaError as error:  # raised outside a command, e.g. by an option callback
        if debug_enabled():
            raise
        typer.echo(f"Error: {' '.join(str(error).split())}", err=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
