"""Progress bars and log lines on stderr (stdout is kept for results).

Usage::

    with make_progress(quiet) as progress:
        task = progress.add_task("scoring clips", total=len(clips))
        for clip in clips:
            ...
            progress.advance(task)

    log("wrote", path, quiet=quiet)
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# The one console for logs and progress: stderr, so that stdout carries only results.
console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, or seconds per item when slower than one per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-- it/s", style="progress.data.speed")
        if speed >= 1:
            return Text(f"{speed:.2f} it/s", style="progress.data.speed")
        return Text(f"{1 / speed:.2f} s/it", style="progress.data.speed")


def make_progress(quiet: bool = False) -> Progress:
    """A Rich `Progress` on stderr: spinner, description, bar, M/N, %, elapsed, remaining, rate.

    With ``quiet=True`` it is disabled (nothing is drawn) but keeps the same API, so callers
    never branch on ``quiet`` themselves.
    """
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        RateColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def log(*objects: object, quiet: bool = False) -> None:
    """Print a log line on stderr unless ``quiet``."""
    if not quiet:
        console.print(*objects)
