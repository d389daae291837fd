"""Option types shared by several subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps. No silent fallback.")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="fp32, bf16 or fp16 (fp16 needs a GPU).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs on stderr.")]
ExistingFile = Annotated[Path, typer.Argument(help="An existing file.")]
