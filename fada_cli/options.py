"""Option types shared by several subcommands, and the one table from config fields to flags.

The library names config fields in its error messages as `` `field` ``; `cli_message` shows each
as the flag that sets it (`FLAGS`), so ``Error: --lr-schedule 'step' is not valid`` on the command
line is ``` `lr_schedule` 'step' is not valid``` for a Python caller.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps. No silent fallback.")]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on a GPU that runs it, else fp32), fp32, bf16 or fp16 (GPU only).")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs on stderr.")]

# Training options shared by train-teacher and distill; a bracketed default applies to a new run
# (with --resume an option left out keeps the checkpoint's value). `\[` keeps Rich from reading
# the brackets as markup.
StepsOption = Annotated[int | None, typer.Option("--steps", help="Optimiser steps in total \\[1000].")]
BatchSizeOption = Annotated[
    int | None, typer.Option("--batch-size", help="Clips per process per micro-batch \\[4; sd15: 1].")
]
GradAccumOption = Annotated[int | None, typer.Option("--grad-accum", help="Micro-batches per optimiser step \\[1].")]
EmaOption = Annotated[float | None, typer.Option("--ema", help="EMA decay of the weights, 0 = off \\[0].")]
MotionLossWeightOption = Annotated[
    float | None,
    typer.Option(
        "--motion-loss-weight",
        help="α: pixels that change across a window's frames (the mouth) weigh up to 1 + α·(their change / the "
        "mean change) in the loss; the demo uses 2 \\[0: plain].",
    ),
]
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
LatentPrecisionOption = Annotated[
    str | None,
    typer.Option(
        "--latent-precision",
        help="Precision of the VAE latents trained on, cached (--cache-latents) or encoded alike: bf16 (half the "
        r"cache) or fp32 \[bf16].",
    ),
]
LogEveryOption = Annotated[
    int | None,
    typer.Option(
        "--log-every", help=r"Write a train_log.csv row (and read the loss back from the GPU) every N steps \[1]."
    ),
]
CollectiveTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--collective-timeout",
        help="Multi-process runs: minutes a process waits at a collective (NCCL/gloo) — the latent-cache fill and a "
        r"large checkpoint save run before barriers — before the run fails; may change on --resume \[60].",
    ),
]
ConnectTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--connect-timeout",
        help="Multi-process runs: seconds to reach the launcher's rendezvous (MASTER_ADDR:MASTER_PORT) before "
        r"failing; may change on --resume \[20].",
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


# The weights of `fada eval`'s learned metrics (shared with `fada cfg-sweep`)
SyncnetWeightsOption = Annotated[
    Path | None, typer.Option("--syncnet-weights", help="SyncNet syncnet_v2.model → Sync-D / Sync-C.")
]
InceptionWeightsOption = Annotated[
    Path | None, typer.Option("--inception-weights", help="Inception TorchScript (clean-fid) → FID.")
]
I3dWeightsOption = Annotated[Path | None, typer.Option("--i3d-weights", help="I3D TorchScript (StyleGAN-V) → FVD.")]
R3dWeightsOption = Annotated[Path | None, typer.Option("--r3d-weights", help="3D-ResNet TorchScript → FVD-R.")]
ExpressionWeightsOption = Annotated[
    Path | None, typer.Option("--expression-weights", help="Expression-coefficient TorchScript → E-FID.")
]
IqaMetricOption = Annotated[
    str,
    typer.Option(
        "--iqa-metric",
        help="Learned IQA row beside BRISQUE, read from the local cache only: qalign (the paper's Q-Align, "
        "Hugging Face cache) or a pyiqa metric in pyiqa's cache; 'none' to skip.",
    ),
]


def eval_config(syncnet_weights, inception_weights, i3d_weights, r3d_weights, expression_weights, iqa_metric: str,
                device: str):  # fmt: skip
    """The `EvalConfig` of `fada eval`'s (and `fada cfg-sweep`'s) options; 'none' turns the IQA metric off."""
    from pipelines.evaluate import EvalConfig

    iqa = None if iqa_metric.strip().lower() in ("", "none") else iqa_metric
    weights = {"syncnet_weights": syncnet_weights, "inception_weights": inception_weights, "i3d_weights": i3d_weights,
               "r3d_weights": r3d_weights, "expression_weights": expression_weights}  # fmt: skip
    return EvalConfig(**weights, iqa_metric=iqa, device=device)


def given(**options) -> dict:
    """The options given on the command line (None = not given) as config overrides."""
    return {
        name: str(value) if isinstance(value, Path) else value for name, value in options.items() if value is not None
    }


def print_fit_result(result, as_json: bool) -> None:
    """A training command's result on stdout (main process only): one line, or JSON with ``--json``."""
    if not result.is_main_process:
        return
    if as_json:
        typer.echo(json.dumps(result.summary()))
        return
    name = "teacher" if result.stage == "teacher" else f"{result.mode} student"
    losses = ", ".join(f"{k.removeprefix('loss_')} {v:.5f}" for k, v in result.means.items() if k.startswith("loss_"))
    typer.echo(
        f"{name} checkpoint {result.checkpoint}: step {result.steps}, loss {result.final_loss:.5f}"
        + (f" ({losses})" if losses else "")
        + f", {result.steps_this_run} steps in {result.seconds:.1f} s ({result.steps_per_s:.2f} steps/s)"
    )


def tier_list(text: str | None) -> tuple[str, ...] | None:
    """'A,B' → ('A', 'B'); None stays None."""
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


# Config fields (and the library's keyword arguments) → the flag that sets them, for the CLI's messages.
FLAGS = {
    # training (`TrainConfig`, `TeacherTrainConfig`, `DistillConfig`, `training.fit`)
    "steps": "--steps", "batch_size": "--batch-size", "grad_accum": "--grad-accum", "lr": "--lr",
    "warmup_steps": "--warmup-steps", "ema": "--ema", "checkpoint_every": "--checkpoint-every", "tiers": "--tier",
    "seed": "--seed", "mixed_precision": "--mixed-precision", "lr_schedule": "--lr-schedule",
    "gradient_checkpointing": "--gradient-checkpointing", "optimizer": "--optimizer", "num_workers": "--num-workers",
    "latent_cache": "--cache-latents", "latent_precision": "--latent-precision", "log_every": "--log-every",
    "collective_timeout": "--collective-timeout", "connect_timeout": "--connect-timeout",
    "loss_weighting": "--loss-weighting", "snr_gamma": "--snr-gamma",
    "motion_loss_weight": "--motion-loss-weight", "identity_augment": "--identity-augment",
    "stage": "--stage", "video_trainable": "--video-trainable", "mode": "--mode", "windows": "--windows",
    "solver_steps": "--solver-steps", "gt_weight": "--gt-weight", "cfg_conditioning": "--cfg-conditioning",
    "cfg_audio_range": "--cfg-audio-range", "cfg_ref_range": "--cfg-ref-range", "manifest": "--manifest",
    "out": "--out", "resume": "--resume", "overwrite": "--overwrite", "init_from": "--init-from",
    "pretrained_sd": "--pretrained-sd", "teacher": "--teacher", "preset": "--preset",
    "frames_per_clip": "--frames-per-clip", "motion_frames": "--motion-frames", "audio_encoder": "--audio-encoder",
    "audio_encoder_path": "--audio-encoder",
    "device": "--device", "dtype": "--dtype",
    # generation (`GenerateConfig`), the CFG sweep (`SweepConfig`), serving (`ServeConfig`)
    "cfg_audio": "--cfg-audio", "cfg_ref": "--cfg-ref", "crop_scale": "--crop-scale", "crop": "--no-crop",
    "image": "--image", "audio": "--audio", "checkpoint": "--checkpoint", "stream": "--stream",
    "audio_scales": "--audio-scales", "ref_scales": "--ref-scales", "max_videos": "--max-videos",
    "host": "--host", "port": "--port", "max_upload_mb": "--max-upload-mb", "max_audio_s": "--max-audio-s",
    # evaluation (`EvalConfig`)
    "generated": "--generated", "reference": "--reference", "syncnet_weights": "--syncnet-weights",
    "inception_weights": "--inception-weights", "i3d_weights": "--i3d-weights", "r3d_weights": "--r3d-weights",
    "expression_weights": "--expression-weights", "iqa_metric": "--iqa-metric",
    # curation (`CurateConfig`) and the demo (`DemoConfig`, `DemoDataConfig`)
    "engine": "--engine", "workers": "--workers", "ray_address": "--ray-address", "size": "--size",
    "thresholds": "--thresholds", "min_seconds": "--min-seconds", "max_seconds": "--max-seconds",
    "minutes": "--minutes", "generate_steps": "--generate-steps", "clips": "--clips", "identities": "--identities",
    "seconds": "--seconds",
    # importing a teacher (`pipelines.hallo.import_hallo`; `out`, `overwrite`, `frames_per_clip` as above)
    "identity": "--identity",
}  # fmt: skip
FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


def cli_message(message: str) -> str:
    """A library message with each `` `field` `` that has a flag shown as that flag."""
    return FIELD.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), message)
