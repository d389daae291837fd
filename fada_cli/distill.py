"""`fada distill`: distill a teacher into a 6-step student with PeRFlow, mixed supervision and CFG tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fada_cli.options import (
    AutocastDtypeOption,
    BatchSizeOption,
    CacheLatentsOption,
    CheckpointEveryOption,
    CollectiveTimeoutOption,
    ConnectTimeoutOption,
    DeviceOption,
    EmaOption,
    GradAccumOption,
    GradientCheckpointingOption,
    JsonOption,
    LatentPrecisionOption,
    LogEveryOption,
    LrScheduleOption,
    MotionLossWeightOption,
    NumWorkersOption,
    OptimizerOption,
    OverwriteOption,
    QuietOption,
    StepsOption,
    TrainSeedOption,
    WarmupStepsOption,
    given,
    print_fit_result,
    tier_list,
)
from pipelines.errors import UsageError

Opt = typer.Option


def _pair(name: str, text: str | None) -> tuple[float, float] | None:
    """'LOW,HIGH' → (LOW, HIGH); UsageError on anything else."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{name} {text!r} is not valid; give two numbers LOW,HIGH such as 1,10.") from None
    return low, high


def command(
    manifest: Annotated[Path, Opt("--manifest", help="Clip manifest (Parquet) from `fada curate` / `fada demo-data`.")],
    out: Annotated[Path, Opt("--out", "-o", help="Student checkpoint folder (also holds the logs and R histogram).")],
    teacher: Annotated[
        Path | None,
        Opt("--teacher", help="Teacher checkpoint (`fada train-teacher`) \\[the recorded one on --resume]."),
    ] = None,
    mode: Annotated[
        str | None, Opt("--mode", help="fast (CFG tokens, 6 NFE) or balanced (3 CFG branches, 18 NFE) \\[fast].")
    ] = None,
    tier: Annotated[
        str | None, Opt("--tier", help="Manifest tier(s), comma-separated; B includes A (tier A ⊂ tier B) \\[B].")
    ] = None,
    windows: Annotated[int | None, Opt("--windows", help="K, PeRFlow time windows \\[4].")] = None,
    solver_steps: Annotated[
        int | None, Opt("--solver-steps", help="Teacher DDIM steps per window; 1000/(K·n) an integer \\[10].")
    ] = None,
    gt_weight: Annotated[
        str | None,
        Opt("--gt-weight", help="Ground-truth weight W: adaptive, adaptive-unlimited, fixed-X \\[adaptive]."),
    ] = None,
    cfg_conditioning: Annotated[
        str | None,
        Opt(
            "--cfg-conditioning",
            help="Student CFG input: tokens, layer, time-embed or none \\[tokens for fast, none for balanced].",
        ),
    ] = None,
    cfg_audio_range: Annotated[
        str | None, Opt("--cfg-audio-range", help="Fast mode: per-sample cfg_a drawn from LOW,HIGH \\[1,10].")
    ] = None,
    cfg_ref_range: Annotated[
        str | None, Opt("--cfg-ref-range", help="Fast mode: per-sample cfg_r drawn from LOW,HIGH \\[1,3].")
    ] = None,
    motion_loss_weight: MotionLossWeightOption = None,
    steps: StepsOption = None,
    batch_size: BatchSizeOption = None,
    lr: Annotated[float | None, Opt("--lr", help="AdamW learning rate \\[1e-5].")] = None,
    lr_schedule: LrScheduleOption = None,
    warmup_steps: WarmupStepsOption = None,
    gradient_checkpointing: GradientCheckpointingOption = None,
    optimizer: OptimizerOption = None,
    num_workers: NumWorkersOption = None,
    cache_latents: CacheLatentsOption = None,
    latent_precision: LatentPrecisionOption = None,
    log_every: LogEveryOption = None,
    collective_timeout: CollectiveTimeoutOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    grad_accum: GradAccumOption = None,
    ema: EmaOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the student checkpoint in --out exactly.")] = False,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    dtype: AutocastDtypeOption = None,
    seed: TrainSeedOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Distill a teacher into a 6-step student with PeRFlow, mixed supervision and CFG tokens.

    The student starts as the teacher (plus zero-initialised CFG conditioning in fast mode); the
    frozen teacher solves each PeRFlow window with DDIM (multi-CFG at per-sample scales in fast
    mode). Per-sample R = L_gt/L_distill and W go to OUT/supervision.csv, TensorBoard (OUT/tb/) and
    OUT/ratio_histogram.png. Bracketed defaults apply to a new run; with --resume, options left out
    keep the checkpoint's values (only --steps, --checkpoint-every, --gradient-checkpointing,
    --num-workers and --cache-latents may change).

    --cache-latents DIR reads the windows' latents from the teacher run's cache (adding the clips it
    lacks, encoded with the teacher's VAE).

    Examples:

        fada distill --teacher runs/teacher --manifest curated/manifest.parquet --tier B --mode fast --out runs/student

        fada distill --teacher runs/teacher --manifest curated/manifest.parquet --out runs/student
        --cache-latents cache/curated-sd15
    """
    from pipelines.rendezvous import CONNECT_TIMEOUT_S, check_rendezvous

    # a dead rendezvous fails before torch and the model code are imported (seconds of start-up)
    check_rendezvous(CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout)
    from pipelines.distill import DistillStage
    from pipelines.training import fit

    overrides = given(tiers=tier_list(tier), mode=mode, windows=windows, solver_steps=solver_steps, gt_weight=gt_weight,
                      motion_loss_weight=motion_loss_weight, cfg_conditioning=cfg_conditioning,
                      cfg_audio_range=_pair("--cfg-audio-range", cfg_audio_range),
                      cfg_ref_range=_pair("--cfg-ref-range", cfg_ref_range), steps=steps, batch_size=batch_size, lr=lr,
                      grad_accum=grad_accum, ema=ema, checkpoint_every=checkpoint_every, seed=seed,
                      lr_schedule=lr_schedule, warmup_steps=warmup_steps, gradient_checkpointing=gradient_checkpointing,
                      optimizer=optimizer, num_workers=num_workers, latent_cache=cache_latents,
                      latent_precision=latent_precision, log_every=log_every, collective_timeout=collective_timeout,
                      connect_timeout=connect_timeout,
                      mixed_precision=dtype)  # fmt: skip
    result = fit(DistillStage(teacher), manifest, out, overrides=overrides, resume=resume, overwrite=overwrite,
                 device=device, quiet=quiet)  # fmt: skip
    print_fit_result(result, as_json)
