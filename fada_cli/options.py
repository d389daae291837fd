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

# Training options shared by train-teacher and distill; a bracketed default applies to a new run
# (with --resume an option left out keeps the checkpoint's value). `\[` keeps Rich from reading
# the brackets as markup.
StepsOption = Annotated[int | None, typer.Option("--steps", help="Optimiser steps in total \\[1000].")]
BatchSizeOption = Annotated[
    int | None, typer.Option("--batch-size", help="Clips per process per micro-batch \\[4; sd15: 1].")
]
GradAccumOption = Annotated[int | None, typer.Option("--grad-accum", help="Micro-batches per optimiser step \\[1].")]
EmaOption = Annotated[float | None, typer.Option("--ema", help="EMA decay of the weights, 0 = off \\[0].")]
CheckpointEveryOption = Annotated[int | None, typer.Option("--checkpoint-every", help="Save every N steps \\[500].")]
LrScheduleOption = Annotated[
    str | None,
    typer.Option("--lr-schedule", help="After the warm-up: constant or cosine (decays to 0 at --steps) \\[constant]."),
]
WarmupStepsOption = Annotated[
    int | None, typer.Option("--warmup-steps", help="Linear learning-rate warm-up from 0 over N steps \\[0].")
]
GradientCheckpointingOption = Annotated[
    bool | None,
    typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in the backward pass (both UNets, temporal layers): less memory, slower; "
        "may change on --resume \\[off; sd15: on].",
    ),
]
OptimizerOption = Annotated[
    str | None,
    typer.Option("--optimizer", help="adamw or adamw8bit (bitsandbytes, 8-bit moments: less memory) \\[adamw]."),
]
NumWorkersOption = Annotated[
    int | None,
    typer.Option(
        "--num-workers",
        help="DataLoader worker processes that decode clips (or read cached latents) per training process; "
        "0 loads in the training process; may change on --resume \\[0 on the CPU, else up to 4].",
    ),
]
CacheLatentsOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-latents",
        help="Folder of the latent cache: each clip's VAE latents (resized frames in pixel space) and audio "
        "features, encoded once on the first run that needs them and read window by window after; shared by "
        "train-teacher and distill on the same manifest. A cache built for another manifest or model is "
        "refused. May change on --resume \\[off: decode clips while training].",
    ),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint in --out.")]
AutocastDtypeOption = Annotated[
    str | None,
    typer.Option(
        "--mixed-precision",
        "--dtype",
        help="Autocast precision through accelerate: no (fp32), bf16 or fp16 (GPU, with loss scaling); trained "
        "weights stay fp32, a frozen distillation teacher is held in it \\[no; sd15: bf16].",
    ),
]
TrainSeedOption = Annotated[
    int | None, typer.Option("--seed", help="Random seed; the same seed gives the same run \\[0].")
]


def training_overrides(device, dtype: str | None, tiers: tuple[str, ...] | None, **given) -> dict:
    """The `TrainConfig` fields given on the command line (None = not given), ``--dtype`` as its
    autocast precision on ``device``."""
    from pipelines.devices import resolve_dtype
    from pipelines.training import MIXED_PRECISION

    if dtype is not None:
        given["mixed_precision"] = MIXED_PRECISION[resolve_dtype(dtype, device)]
    if given.get("latent_cache") is not None:
        given["latent_cache"] = str(given["latent_cache"])
    return {k: v for k, v in (given | {"tiers": tiers}).items() if v is not None}


def tier_list(text: str | None) -> tuple[str, ...] | None:
    """'A,B' → ('A', 'B'); None stays None."""
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())
