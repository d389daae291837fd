"""The `fada` Typer app: every subcommand is registered here (`COMMANDS`), and here alone user
errors become a one-line ``Error: …`` on stderr with an exit code (1, or 2 for usage).

A subcommand's module is imported only when that subcommand runs (or shows its help), so
``fada --help`` reads each command's summary from its source and imports neither torch nor the
curation stack. Set ``FADA_DEBUG=1`` to get the full traceback instead of the one-line error.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from fada_cli.options import cli_message
from pipelines.errors import FadaError


@dataclass(frozen=True)
class Group:
    """A subcommand that holds subcommands (``fada import hallo``), registered as lazily as the rest."""

    summary: str  # its line in `fada --help`
    commands: dict[str, str]  # subcommand → module of fada_cli, as in `COMMANDS`


# subcommand → the module of fada_cli whose `command` function it runs (or a `Group` of them), in the order
# `fada --help` lists them
COMMANDS: dict[str, str | Group] = {
    "demo-data": "demo_data",
    "curate": "curate",
    "train-teacher": "train_teacher",
    "import": Group(
        "Import an existing teacher (Hallo/Hallo2) as a fada teacher checkpoint.", {"hallo": "import_hallo"}
    ),
    "distill": "distill",
    "generate": "generate",
    "eval": "evaluate",
    "cfg-sweep": "cfg_sweep",
    "demo": "demo",
    "info": "info",
    "serve": "serve",
}


class LazyCommands(TyperGroup):
    """The subcommands of `COMMANDS` (or of a `Group`), each imported when it is invoked (or its own help is
    asked for)."""

    def __init__(self, *args, registry: dict[str, str | Group] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.registry = COMMANDS if registry is None else registry

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.registry)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in self.registry:
            return None
        summary = command_summary(self.registry[name])
        return click.Command(name, help=summary, short_help=summary)  # for the list in `fada --help`

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] in self.registry and args[0] not in self.commands:
            self.commands[args[0]] = load_command(args[0], self.registry[args[0]])
        return super().resolve_command(ctx, args)


def command_summary(entry: str | Group) -> str:
    """A group's summary, or the first line of ``fada_cli.<module>.command``'s docstring, read from the source
    (no import)."""
    if isinstance(entry, Group):
        return entry.summary
    module = entry
    origin = importlib.util.find_spec(f"fada_cli.{module}").origin
    tree = ast.parse(Path(origin).read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "command")
    return (ast.get_docstring(function) or "").split("\n")[0]


app = typer.Typer(
    cls=LazyCommands,
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


def one_line(error: FadaError) -> str:
    """The error's message on one line, its config fields shown as the flags that set them."""
    return cli_message(" ".join(str(error).split()))


def report_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a subcommand so a `FadaError` becomes ``Error: …`` on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FadaError as error:
            if debug_enabled():
                raise
            typer.echo(f"Error: {one_line(error)}", err=True)
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


def load_command(name: str, entry: str | Group) -> click.Command:
    """The click command of subcommand ``name``: its module imported, its errors reported as one line (a
    group: its own lazy subcommands, nothing imported yet)."""
    if isinstance(entry, Group):
        return LazyCommands(name=name, help=entry.summary, no_args_is_help=True, registry=entry.commands)
    command = importlib.import_module(f"fada_cli.{entry}").command
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
    single.command(name, help=help_text(command.__doc__ or ""))(report_errors(command))
    return typer.main.get_command(single)


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

    Lifecycle: demo-data → curate → train-teacher (or import hallo) → distill → generate → eval.
    """


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except FadaError as error:  # raised outside a command, e.g. by an option callback
        if debug_enabled():
            raise
        typer.echo(f"Error: {one_line(error)}", err=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
