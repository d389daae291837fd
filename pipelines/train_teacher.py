"""The teacher training loop (SPEC §3–5): ε-prediction DDPM loss on tier-A clips.

One optimiser step (the loop is `training.run_training_loop`): for each of ``grad_accum``
micro-batches, draw B clip windows (`pipelines.data`), encode them (or read their cached
latents), draw t uniform in 0..999 and ε ~ N(0, I), form z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε with the
SD1.5 schedule (`schedulers.add_noise`), drop conditions
(SPEC §3: audio alone with p_drop_audio, both with p_drop_both, from the model config) and
regress the model's ε on the true ε (MSE); then clip gradients, step AdamW and the LR schedule,
update the EMA.

Loss weighting (``loss_weighting``, `loss_weights`): ``eps`` is the plain ε-MSE of SPEC §3–4
(the default). ``truncated-snr`` multiplies each sample's ε-MSE by max(1, 1/SNR_t), SNR_t =
ᾱ_t/(1−ᾱ_t) — the "truncated SNR" weighting of Salimans & Ho (2022, Progressive Distillation,
§4), i.e. max(SNR_t, 1)·‖x_0 − x̂_0‖²; ``v`` is the v-prediction MSE (weight 1/ᾱ_t) and
``min-snr`` Min-SNR-γ (weight min(SNR_t, γ)/SNR_t). The prediction stays ε and the schedule
SD1.5's; only the weight changes. Why they exist: with the plain loss the error allowed at high t is tiny in ε but
amplified by 1/SNR_t (≈ 140× at t = 961) in the x_0 the sampler starts from, and a small model
trained briefly in pixel space (the demo preset) fits ε there without learning x_0 (measured in
`bench/results/evidence_demo_teacher_students.md`).

Stages (``stage``; SPEC §3b, the paper's teacher recipe after EMO and Loopy):

- ``image``: single frames (F = 1): a target frame and a reference frame of the same clip; the
  reference net and the denoising net learn to redraw the reference in the target's pose and
  expression. The audio is dropped for every sample and the temporal layers never run; both are
  frozen (bit-identical after the stage).
- ``video``: F-frame windows with motion frames and audio, started from an image-stage teacher
  (``--init-from``; anything else is an error). By default (``video_trainable="audio-temporal"``)
  it trains the audio path (projection, audio attention) and the temporal layers with every other
  spatial weight frozen, as Hallo's stage 2 and EMO's second stage do; ``all`` trains everything.
- ``joint`` (the default, what fada did before stages existed): everything at once on F-frame
  windows from the start.

The checkpoint records the stages its weights went through as ``config["stages"]``
(``[{"stage": "image", "steps": 800}, {"stage": "video", "steps": 300}]``).

``--init-from`` starts a new run (step 0, fresh optimiser) from another teacher checkpoint's
weights — to fine-tune a teacher on other data or with another loss weighting.

Everything random about step s (clip windows, t, ε, dropout) comes from generators seeded by
(seed, s, process), and the data stream is a position counter, so ``--resume`` from a checkpoint
replays the uninterrupted run exactly. Multi-GPU runs go through `accelerate` (``accelerate
launch``); each process draws its own B windows, so the effective batch is
B × processes × grad_accum.

Checkpoint contents (stage ``teacher``, mode ``teacher``): the component folders hold the EMA
weights when EMA is on (what `generate` should use), else the trained weights; the training state
holds the optimizer, LR scheduler, RNG states, data sampler position, the EMA and — when EMA is
on — the raw trained weights. Logs: ``OUT/train_log.csv`` (step, loss, lr, seconds) and
TensorBoard events under ``OUT/tb/``; they are kept across checkpoint saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.checkpoint import load_checkpoint_info
from pipelines.data import batch_latents
from pipelines.errors import UsageError
from pipelines.manifest import manifest_hash
from pipelines.model import FadaModel, sample_condition_dropout
from pipelines.model_config import ModelConfig
from pipelines.progress import log
from pipelines.schedulers import NUM_TRAIN_TIMESTEPS, add_noise, sd15_alphas_cumprod
from pipelines.training import (
    MIXED_PRECISION,
    TB_DIR,
    TrainConfig,
    TrainingState,
    TrainLogs,
    attach_latent_cache,
    check_out,
    make_ema,
    make_optimizer,
    restore_training_state,
    resumed_configs,
    run_training_loop,
    save_training_checkpoint,
    set_up_loop,
    step_seed,
)

__all__ = [
    "LOSS_WEIGHTINGS",
    "MIXED_PRECISION",
    "MODE",
    "STAGE",
    "TB_DIR",
    "TeacherTrainConfig",
    "TrainConfig",
    "TrainResult",
    "TEACHER_STAGES",
    "loss_weights",
    "set_trainable",
    "step_seed",
    "train_teacher",
]

STAGE = MODE = "teacher"
LOSS_WEIGHTINGS = ("eps", "min-snr", "truncated-snr", "v")
TEACHER_STAGES = ("joint", "image", "video")  # what --stage trains (see the module docstring)
VIDEO_TRAINABLE = ("audio-temporal", "all")  # what the video stage trains


@dataclass(frozen=True)
class TeacherTrainConfig(TrainConfig):
    loss_weighting: str = "eps"  # eps (plain ε-MSE, SPEC) | min-snr | truncated-snr | v (see `loss_weights`)
    snr_gamma: float = 5.0  # γ of min-snr: weight min(SNR_t, γ)/SNR_t
    stage: str = "joint"  # joint: everything on F-frame windows | image: F = 1, no audio/temporal | video
    video_trainable: str = "audio-temporal"  # video stage: audio path + temporal layers (frozen spatial) | all
    motion_loss_weight: float = 0.0  # α of `motion_weights`: pixels that change across a window's frames
    # (the mouth, the moving head) weigh up to 1 + α·(their change / the mean change) in the loss; 0 = plain

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = (("--loss-weighting", self.loss_weighting, LOSS_WEIGHTINGS), ("--stage", self.stage, TEACHER_STAGES),
                  ("--video-trainable", self.video_trainable, VIDEO_TRAINABLE))  # fmt: skip
        for option, value, valid in checks:
            if value not in valid:
                raise UsageError(f"{option} {value!r} is not valid; use {' or '.join(valid)}.")
        if not self.motion_loss_weight >= 0:
            raise UsageError(f"motion_loss_weight {self.motion_loss_weight} is not valid; use 0 (off) or more.")
        if not self.snr_gamma > 0:
            raise UsageError(f"--snr-gamma {self.snr_gamma} is not valid; use a positive number such as 5.")


def loss_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, weighting: str, snr_gamma: float = 5.0):
    """Per-sample weights (B,) of the ε-MSE at integer timesteps ``t`` (B,), SNR_t = ᾱ_t/(1−ᾱ_t):

    - ``eps``: 1 (the plain ε-MSE);
    - ``min-snr``: min(SNR_t, γ)/SNR_t — Min-SNR-γ for an ε-prediction net (Hang et al. 2023, Eq. 8);
    - ``truncated-snr``: max(1, 1/SNR_t) — Salimans & Ho (2022, Progressive Distillation, §4);
    - ``v``: 1 + 1/SNR_t = 1/ᾱ_t — the v-prediction MSE ‖v − v̂‖² of the same ε-parameterised net
      (v = √ᾱ·ε − √(1−ᾱ)·x0, so v − v̂ = (ε − ε̂)/√ᾱ; Salimans & Ho 2022, §4).
    """
    alpha_bar = alphas_cumprod[t].float()
    snr = alpha_bar / (1.0 - alpha_bar)
    if weighting == "eps":
        return torch.ones_like(alpha_bar)
    if weighting == "min-snr":
        return torch.clamp(snr, max=snr_gamma) / snr
    if weighting == "truncated-snr":
        return torch.clamp(1.0 / snr, min=1.0)
    if weighting == "v":
        return 1.0 / alpha_bar
    raise UsageError(f"loss weighting {weighting!r} is not valid; use {' or '.join(LOSS_WEIGHTINGS)}.")


def set_trainable(
    model: FadaModel, stage: str, video_trainable: str = "audio-temporal"
) -> dict[str, torch.nn.Parameter]:
    """Freeze what ``stage`` does not train; return the trainable parameters by name.

    - ``joint`` and ``video`` with ``all``: everything the model trains (its constructor already
      froze the codec and the reference-net layers past its last recorded input);
    - ``image``: the reference net and the denoising net; the temporal layers (F = 1 never runs them)
      and the audio projection (audio is always dropped) are frozen;
    - ``video`` with ``audio-temporal``: the audio projection, the denoising net's audio attention
      (each transformer block's ``attn2`` and the ``norm2`` before it) and the temporal layers;
      the reference net and the rest of the denoising net are frozen — Hallo's stage 2 (`trainable_para: audio_modules,
      motion_modules`; reference and denoising UNets frozen) and EMO's second stage.
    """
    for name, param in model.named_parameters():
        if stage == "image" and name.startswith(("temporal_layers.", "audio_projection.")):
            param.requires_grad_(False)
        elif stage == "video" and video_trainable == "audio-temporal":
            audio_attention = (
                name.startswith("denoising_unet.")
                and ".transformer_blocks." in name
                and (".attn2." in name or ".norm2." in name)
            )
            if not (audio_attention or name.startswith(("temporal_layers.", "audio_projection."))):
                param.requires_grad_(False)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


LOG_FILE = "train_log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "seconds")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # the checkpoint folder
    steps: int  # optimiser steps done in total
    steps_this_run: int  # steps done by this call (fewer than `steps` after --resume)
    final_loss: float  # loss of the last step
    seconds: float  # wall time of this call's training loop
    steps_per_s: float  # steps_this_run / seconds
    processes: int  # accelerate processes
    dataset_clips: int  # clips in the training set
    is_main_process: bool  # False on the other processes of a multi-process run (they print nothing)


def train_teacher(
    manifest: str | Path,
    out: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    device: torch.device,
    resume: bool = False,
    overwrite: bool = False,
    pretrained_sd: str | Path | None = None,
    quiet: bool = False,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume training) the teacher on ``manifest`` and write checkpoints to ``out``.

    ``init_from``: a teacher checkpoint whose weights a new run starts from (its model config
    must equal ``model_config``).
    """
    out, manifest = Path(out), Path(manifest)
    if not isinstance(train_config, TeacherTrainConfig):
        train_config = TeacherTrainConfig.from_dict(train_config.to_dict())
    # 1. check the output folder and, on --resume, the checkpoint in it
    if resume and (overwrite or pretrained_sd is not None or init_from is not None):
        raise UsageError(
            "--resume continues the checkpoint in --out; drop --overwrite, --pretrained-sd and --init-from."
        )
    if init_from is not None and pretrained_sd is not None:
        raise UsageError("--init-from and --pretrained-sd both give starting weights; pass one of them.")
    if init_from is not None and Path(init_from).absolute() == out.absolute():
        raise UsageError(f"--init-from {init_from} is the --out folder; to continue it use --resume.")
    info = check_out(out, resume, overwrite, STAGE)
    if info is not None:
        model_config, train_config = resumed_configs(info, model_config, train_config, manifest)
    history = starting_history(info, init_from, train_config.stage)

    # 2.-3. accelerate (one process, or `accelerate launch` for several); clips decoded when a window
    # of them is drawn, windows drawn by a resumable stream of keys (single frames in the image stage)
    frames = 1 if train_config.stage == "image" else None
    setup = set_up_loop(out, info, manifest, model_config, train_config, device, quiet, num_frames=frames)
    accelerator, device = setup.accelerator, setup.device

    # 4. model, optimiser, LR schedule, EMA (restored exactly on --resume); the latent cache
    if info is not None:
        model = FadaModel.from_checkpoint(out, expect_stage=STAGE)
    elif init_from is not None:
        model = FadaModel.from_checkpoint(init_from, expect_stage=STAGE)
        if model.config != model_config:
            diff = [k for k, v in model.config.to_dict().items() if model_config.to_dict()[k] != v]
            raise UsageError(
                f"--init-from {init_from}: its model options differ in {diff}; drop the options that change them."
            )
    elif pretrained_sd is not None:
        model = FadaModel.from_pretrained_sd(model_config, pretrained_sd)
    else:
        torch.manual_seed(train_config.seed)
        model = FadaModel.from_config(model_config)
    model.to(device)
    if train_config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = set_trainable(model, train_config.stage, train_config.video_trainable)
    optimizer, lr_scheduler = make_optimizer(params, train_config)
    ema = make_ema(params, train_config.ema)
    state = TrainingState(params, optimizer, lr_scheduler, ema, setup.sampler)
    elapsed = 0.0
    if info is not None:
        elapsed = restore_training_state(out, state)
    attach_latent_cache(setup, train_config, model, quiet)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    state.optimizer, state.lr_scheduler = optimizer, lr_scheduler  # save through the prepared wrappers
    alphas_cumprod = sd15_alphas_cumprod(torch.float32).to(device)
    mhash = manifest_hash(manifest)
    config_record = {"model": model_config.to_dict(), "train": train_config.to_dict()}
    started_from = str(init_from) if init_from is not None else (info.config.get("init_from") if info else None)
    if started_from is not None:
        config_record["init_from"] = started_from  # provenance: the weights step 0 started from

    # 5. the loop (`training.run_training_loop`): what is the teacher's own is its loss, log row and checkpoint
    logs = TrainLogs(out, setup.start_step, accelerator.is_main_process, {LOG_FILE: LOG_COLUMNS})

    def micro_loss(batch, generator):
        return teacher_loss(model, batch, alphas_cumprod, generator, model_config, train_config), {}

    def write_log(step, records, means, lr, seconds):
        logs.write_rows(LOG_FILE, [[step, repr(means["loss"]), repr(lr), f"{seconds:.3f}"]])
        logs.scalars(step, {"train/loss": means["loss"], "train/lr": lr})

    def save(step, seconds):
        save_training_checkpoint(
            accelerator,
            out,
            logs,
            state,
            accelerator.unwrap_model(model),
            seconds,
            stage=STAGE,
            mode=MODE,
            config=config_record | {"stages": [*history, {"stage": train_config.stage, "steps": step}]},
            step=step,
            manifest_hash=mhash,
        )

    task_name = "training teacher" + ("" if train_config.stage == "joint" else f" ({train_config.stage} stage)")
    done = run_training_loop(setup, train_config, model, state, logs, elapsed, task_name, micro_loss, write_log,
                             save, quiet=quiet)  # fmt: skip
    if accelerator.is_main_process:
        log(
            f"trained {done.steps_done} steps in {done.seconds:.1f} s ({done.steps_done / done.seconds:.2f} steps/s); "
            f"checkpoint {out}",
            quiet=quiet,
        )
    return TrainResult(
        checkpoint=out,
        steps=train_config.steps,
        steps_this_run=done.steps_done,
        final_loss=done.means["loss"],
        seconds=done.seconds,
        steps_per_s=done.steps_done / done.seconds if done.seconds > 0 else float("inf"),
        processes=setup.world,
        dataset_clips=len(setup.dataset),
        is_main_process=accelerator.is_main_process,
    )


def teacher_loss(
    model, batch: dict, alphas_cumprod, generator: torch.Generator, config: ModelConfig,
    train_config: TeacherTrainConfig = TeacherTrainConfig(),
) -> torch.Tensor:  # fmt: skip
    """ε-prediction DDPM loss of one micro-batch with condition dropout (SPEC §3, §4 schedule),
    each sample's MSE weighted by `loss_weights` (1 for the default ``eps``).

    Image stage: the batch holds single frames (F = 1), the reference net sees the reference alone
    (motion frames = the reference, as for a first clip) and the audio is dropped for every sample.
    """
    unwrapped = getattr(model, "module", model)
    image_stage = train_config.stage == "image"
    # (B, F, C, h, w), (B, C, h, w), (B, M, C, h, w) or None: from the latent cache, or encoded here
    z0, reference_latent, motion_latents = batch_latents(unwrapped.encode_images, batch, motion=not image_stage)
    b, device = z0.shape[0], z0.device
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=generator).to(device)  # (B,)
    eps = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(device)  # (B, F, C, h, w)
    drop_audio, drop_reference = sample_condition_dropout(
        b, config.p_drop_audio, config.p_drop_both, generator=generator, device=device
    )
    if image_stage:
        drop_audio = torch.ones_like(drop_audio)
    noisy = add_noise(z0.float(), eps, t, alphas_cumprod)  # z_t
    pred = model(
        noisy, t.float(), reference_latent, motion_latents, batch["audio_features"], drop_audio, drop_reference
    )
    squared = (pred.float() - eps).pow(2)  # (B, F, C, h, w)
    if train_config.motion_loss_weight:
        squared = squared * motion_weights(z0.float(), train_config.motion_loss_weight)
    per_sample = squared.flatten(1).mean(dim=1)  # (B,)
    weights = loss_weights(t, alphas_cumprod, train_config.loss_weighting, train_config.snr_gamma)
    return (weights * per_sample).mean()


def motion_weights(z0: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, 1, h, w) of F-frame windows z0 (B, F, C, h, w), mean 1 per window.

    The spread s of each pixel over the window's frames (standard deviation, mean over channels) marks
    what moves — in a talking head, the mouth above all — and w = 1 + α·s / mean(s), normalised to mean
    1, weighs it up: a mouth of 1–2 % of the pixels otherwise carries too little of the loss for a short
    run to learn it from the audio. The weights depend on the whole window, not on any one frame's
    target, so they favour no frame; single frames (F = 1, the image stage) weigh 1 everywhere.
    """
    if z0.shape[1] < 2:
        return torch.ones_like(z0[:, :1, :1])
    spread = z0.std(dim=1, keepdim=True).mean(dim=2, keepdim=True)  # (B, 1, 1, h, w)
    weights = 1.0 + alpha * spread / spread.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return weights / weights.mean(dim=(-2, -1), keepdim=True)


def starting_history(info, init_from, stage: str) -> list[dict]:
    """The stages before this run's (kept in the checkpoint as ``config["stages"]``).

    A resumed run continues its own last entry; a run with ``init_from`` extends that teacher's
    history; a new run starts empty. The video stage must start from a teacher that went through the
    image stage.
    """
    if info is not None:
        return info.teacher_stages[:-1]
    if init_from is None:
        if stage == "video":
            raise UsageError(
                "--stage video trains the audio path and temporal layers on top of an image-stage teacher; "
                "pass --init-from a checkpoint made with `fada train-teacher --stage image`."
            )
        return []
    history = load_checkpoint_info(init_from, expect_stage=STAGE).teacher_stages
    if stage == "video" and not any(entry["stage"] == "image" for entry in history):
        went = " → ".join(entry["stage"] for entry in history)
        raise UsageError(
            f"--stage video needs an image-stage teacher, but --init-from {init_from} went through {went}; "
            "train one with `fada train-teacher --stage image` first."
        )
    return history
