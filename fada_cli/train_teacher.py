"""`fada train-teacher`: train the dual-UNet teacher (ε-prediction, multi-CFG) on tier-A clips."""

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

Opt = typer.Option


def command(
    manifest: Annotated[
        Path, Opt("--manifest", help="Clip manifest (Parquet) from `fada curate` or `fada demo-data`.")
    ],
    out: Annotated[Path, Opt("--out", "-o", help="Checkpoint folder to write (also holds train_log.csv and tb/).")],
    tier: Annotated[str | None, Opt("--tier", help="Manifest tier(s) to train on, comma-separated \\[A].")] = None,
    preset: Annotated[
        str | None, Opt("--preset", help="Model preset: tiny, demo or sd15 (a new run defaults to demo).")
    ] = None,
    steps: StepsOption = None,
    batch_size: BatchSizeOption = None,
    lr: Annotated[float | None, Opt("--lr", help="AdamW learning rate \\[1e-4].")] = None,
    frames: Annotated[
        int | None, Opt("--frames-per-clip", "--frames", help="F, frames per training clip \\[the preset's].")
    ] = None,
    grad_accum: GradAccumOption = None,
    ema: EmaOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the checkpoint in --out exactly.")] = False,
    overwrite: OverwriteOption = False,
    pretrained_sd: Annotated[
        Path | None, Opt("--pretrained-sd", help="Initialise both UNets (and VAE) from a diffusers SD1.5 folder.")
    ] = None,
    init_from: Annotated[
        Path | None,
        Opt("--init-from", help="Start a new run from the weights of this teacher checkpoint (fine-tuning)."),
    ] = None,
    stage: Annotated[
        str | None,
        Opt(
            "--stage",
            help="joint (everything at once on F-frame windows), image (single frames, reference net + denoising "
            "net, no audio or temporal layers) or video (audio path + temporal layers; needs --init-from an "
            "image-stage teacher) \\[joint].",
        ),
    ] = None,
    video_trainable: Annotated[
        str | None,
        Opt(
            "--video-trainable",
            help="What the video stage trains: audio-temporal (audio projection, audio attention, temporal "
            "layers; other spatial weights frozen, as Hallo's stage 2) or all \\[audio-temporal].",
        ),
    ] = None,
    loss_weighting: Annotated[
        str | None,
        Opt(
            "--loss-weighting",
            help="Weight of each sample's ε-MSE: eps (1), min-snr (min(SNR,γ)/SNR), truncated-snr "
            "(max(1, 1/SNR)) or v (1 + 1/SNR, the v-prediction MSE) \\[eps].",
        ),
    ] = None,
    snr_gamma: Annotated[float | None, Opt("--snr-gamma", help="γ of --loss-weighting min-snr \\[5].")] = None,
    motion_loss_weight: MotionLossWeightOption = None,
    identity_augment: Annotated[
        float | None,
        Opt(
            "--identity-augment",
            help="Probability that a window gets one random colour/flip/shift change, the same on its target, "
            "reference and motion frames, so that identities' colours cannot be memorised \\[0].",
        ),
    ] = None,
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
    audio_encoder: Annotated[
        str | None, Opt("--audio-encoder", help="'mel' or the path of a local wav2vec2 folder \\[mel].")
    ] = None,
    device: DeviceOption = "auto",
    dtype: AutocastDtypeOption = None,
    seed: TrainSeedOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train the dual-UNet teacher (ε-prediction, multi-CFG) on tier-A clips.

    The paper's recipe is two stages: --stage image (single frames: the reference net and the
    denoising net learn to redraw the reference), then --stage video --init-from that teacher (the
    audio path and the temporal layers learn lip sync and motion on F-frame windows). Without
    --stage the teacher trains everything at once (joint). The checkpoint records its stages.

    Writes a checkpoint folder every --checkpoint-every steps and at the end, with the loss curve in
    OUT/train_log.csv and TensorBoard events in OUT/tb/. Bracketed defaults apply to a new run; with
    --resume, options left out keep the checkpoint's values (only --steps, --checkpoint-every,
    --gradient-checkpointing, --num-workers and --cache-latents may change).
    Clips are decoded when a window of them is drawn (--num-workers DataLoader workers);
    --cache-latents DIR encodes each clip's VAE latents and audio features once and reads the
    windows from DIR after (shared with `fada distill` on the same manifest and VAE).
    Multi-GPU: `accelerate launch --multi_gpu --num_processes N -m fada_cli.main train-teacher ...`.

    Examples:

        fada train-teacher --manifest demo/manifest.parquet --stage image --preset demo --out runs/image --steps 800

        fada train-teacher --manifest demo/manifest.parquet --stage video --init-from runs/image --out runs/teacher
        --steps 400

        fada train-teacher --manifest demo/manifest.parquet --tier A --preset demo --out runs/teacher --steps 2000

        fada train-teacher --manifest demo/manifest.parquet --init-from runs/teacher --out runs/teacher-snr
        --loss-weighting truncated-snr --steps 1000

        fada train-teacher --manifest curated/manifest.parquet --preset sd15 --pretrained-sd sd15/ --stage image
        --out runs/image --cache-latents cache/curated-sd15 --num-workers 4
    """
    from pipelines.rendezvous import CONNECT_TIMEOUT_S, check_rendezvous

    # a dead rendezvous fails before torch and the model code are imported (seconds of start-up)
    check_rendezvous(CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout)
    from pipelines.train_teacher import TeacherStage
    from pipelines.training import fit

    overrides = given(tiers=tier_list(tier), steps=steps, batch_size=batch_size, lr=lr, grad_accum=grad_accum, ema=ema,
                      checkpoint_every=checkpoint_every, seed=seed, loss_weighting=loss_weighting, snr_gamma=snr_gamma,
                      motion_loss_weight=motion_loss_weight, identity_augment=identity_augment,
                      stage=stage, video_trainable=video_trainable, lr_schedule=lr_schedule, warmup_steps=warmup_steps,
                      gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, num_workers=num_workers,
                      latent_cache=cache_latents, latent_precision=latent_precision, log_every=log_every,
                      collective_timeout=collective_timeout, connect_timeout=connect_timeout,
                      mixed_precision=dtype)  # fmt: skip
    model_overrides = given(frames_per_clip=frames, **audio_encoder_fields(audio_encoder))
    result = fit(TeacherStage(pretrained_sd), manifest, out, preset=preset, overrides=overrides,
                 model_overrides=model_overrides, resume=resume, init_from=init_from, overwrite=overwrite,
                 device=device, quiet=quiet)  # fmt: skip
    print_fit_result(result, as_json)


def audio_encoder_fields(value: str | None) -> dict:
    """--audio-encoder mel|PATH → the `ModelConfig` fields it sets."""
    if value is None:
        return {}
    return {"audio_encoder": "mel"} if value == "mel" else {"audio_encoder": "wav2vec2", "audio_encoder_path": value}
