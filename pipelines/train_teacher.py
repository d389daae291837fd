"""The teacher's training stage (docs/DESIGN.md §3–§5): ε-prediction DDPM loss on tier-A clips.

`TeacherStage` is what `training.fit` needs to train the teacher; the loop is the one every stage
runs (`training.run_training_loop`). One micro-batch (`teacher_loss`): B clip windows
(`pipelines.data`), encoded (or read from the latent cache), t uniform in 0..999 and ε ~ N(0, I),
z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε with the SD1.5 schedule (`schedulers.add_noise`), conditions dropped
(DESIGN §3: audio alone with ``p_drop_audio``, both with ``p_drop_both``, from the training config),
and the model's ε regressed on the true ε (MSE). It trains fada's own model family; a `hallo`-family
teacher (docs/DESIGN.md §3c) is imported (`fada import hallo`) and distilled, not trained here.

Loss weighting (``loss_weighting``, `loss_weights`): ``eps`` is the plain ε-MSE of DESIGN §3–§4
(the default). ``truncated-snr`` multiplies each sample's ε-MSE by max(1, 1/SNR_t), SNR_t =
ᾱ_t/(1−ᾱ_t) — the "truncated SNR" weighting of Salimans & Ho (2022, Progressive Distillation,
§4), i.e. max(SNR_t, 1)·‖x_0 − x̂_0‖²; ``v`` is the v-prediction MSE (weight 1/ᾱ_t) and
``min-snr`` Min-SNR-γ (weight min(SNR_t, γ)/SNR_t). The prediction stays ε and the schedule
SD1.5's; only the weight changes. Why they exist: with the plain loss the error allowed at high t is tiny in ε but
amplified by 1/SNR_t (≈ 140× at t = 961) in the x_0 the sampler starts from, and a small model
trained briefly in pixel space (the demo preset) fits ε there without learning x_0 (measured in
`bench/results/evidence_demo_teacher_students.md`).

Stages (``stage``; DESIGN §3b, the paper's teacher recipe after EMO and Loopy):

- ``image``: single frames (F = 1): a target frame and a reference frame of the same clip; the
  reference net and the denoising net learn to redraw the reference in the target's pose and
  expression. The audio is dropped for every sample and the temporal layers never run; both are
  frozen (bit-identical after the stage).
- ``video``: F-frame windows with motion frames and audio, started from an image-stage teacher
  (``init_from``; anything else is an error). By default (``video_trainable="audio-temporal"``)
  it trains the audio path (projection, audio attention) and the temporal layers with every other
  spatial weight frozen, as Hallo's stage 2 and EMO's second stage do; ``all`` trains everything.
- ``joint`` (the default, what fada did before stages existed): everything at once on F-frame
  windows from the start.

The checkpoint records the stages its weights went through as ``config["stages"]``
(``[{"stage": "image", "steps": 800}, {"stage": "video", "steps": 300}]``).

``init_from`` starts a new run (step 0, fresh optimiser) from another teacher checkpoint's
weights — to fine-tune a teacher on other data or with another loss weighting; ``pretrained_sd``
(`TeacherStage`) starts both UNets from a diffusers SD1.5 folder.

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

from pipelines.data import batch_latents
from pipelines.errors import UsageError
from pipelines.model import FadaModel
from pipelines.schedulers import NUM_TRAIN_TIMESTEPS, add_noise, sd15_alphas_cumprod
from pipelines.training import (
    Resolved,
    Run,
    Stage,
    TrainConfig,
    latent_dtype,
    motion_weights,
    sample_condition_dropout,
)

STAGE = "teacher"
LOSS_WEIGHTINGS = ("eps", "min-snr", "truncated-snr", "v")
TEACHER_STAGES = ("joint", "image", "video")  # what `stage` trains (see the module docstring)
VIDEO_TRAINABLE = ("audio-temporal", "all")  # what the video stage trains


@dataclass(frozen=True)
class TeacherTrainConfig(TrainConfig):
    loss_weighting: str = "eps"  # eps (plain ε-MSE, DESIGN §4) | min-snr | truncated-snr | v (see `loss_weights`)
    snr_gamma: float = 5.0  # γ of min-snr: weight min(SNR_t, γ)/SNR_t
    stage: str = "joint"  # joint: everything on F-frame windows | image: F = 1, no audio/temporal | video
    video_trainable: str = "audio-temporal"  # video stage: audio path + temporal layers (frozen spatial) | all

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = (("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS), ("stage", self.stage, TEACHER_STAGES),
                  ("video_trainable", self.video_trainable, VIDEO_TRAINABLE))  # fmt: skip
        for name, value, valid in checks:
            if value not in valid:
                raise UsageError(f"`{name}` {value!r} is not valid; use {' or '.join(valid)}.")
        if not self.snr_gamma > 0:
            raise UsageError(f"`snr_gamma` {self.snr_gamma} is not valid; use a positive number such as 5.")


class TeacherStage(Stage):
    """The teacher: image, video or joint (`TeacherTrainConfig.stage`), from scratch, SD1.5 or a teacher."""

    name = STAGE
    config_class = TeacherTrainConfig
    starting_weights = ("pretrained_sd",)

    def __init__(self, pretrained_sd: str | Path | None = None):
        self.pretrained_sd = pretrained_sd  # a diffusers SD1.5 folder both UNets (and the VAE) start from

    def check(self, resolved: Resolved) -> None:
        if resolved.model_config.family != "fada":  # before anything is written
            raise UsageError(
                f"training a {resolved.model_config.family}-family teacher is not supported (its loss would need "
                "the family's face inputs and its own prediction target); import one with `fada import hallo` and "
                "distil it, or train a fada preset (tiny, demo, sd15)."
            )
        self.history = starting_history(resolved.resumed, resolved.started, resolved.config.stage)

    def may_skip_parameters(self, config: TeacherTrainConfig) -> bool:
        frozen_reference = config.stage == "video" and config.video_trainable == "audio-temporal"
        return not frozen_reference and super().may_skip_parameters(config)

    def frames(self, config: TeacherTrainConfig) -> int | None:
        return 1 if config.stage == "image" else None  # the image stage trains on single frames

    def new_model(self, run: Run) -> FadaModel:
        if self.pretrained_sd is not None:
            return FadaModel.from_pretrained_sd(run.model_config, self.pretrained_sd)
        return super().new_model(run)

    def build_model(self, run: Run) -> FadaModel:
        self.config, self.alphas_cumprod = run.config, sd15_alphas_cumprod(torch.float32).to(run.device)
        return super().build_model(run)

    def trainable(self, model: FadaModel, config: TeacherTrainConfig) -> dict[str, torch.nn.Parameter]:
        return set_trainable(model, config.stage, config.video_trainable)

    def loss(self, model, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return teacher_loss(model, batch, self.alphas_cumprod, generator, self.config), {}

    def task_name(self, config: TeacherTrainConfig) -> str:
        return "training teacher" + ("" if config.stage == "joint" else f" ({config.stage} stage)")

    def record(self, run: Run, step: int) -> dict:
        return {"config": {"stages": [*self.history, {"stage": run.config.stage, "steps": step}]}}


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


def teacher_loss(
    model, batch: dict, alphas_cumprod, generator: torch.Generator,
    train_config: TeacherTrainConfig = TeacherTrainConfig(),
) -> torch.Tensor:  # fmt: skip
    """ε-prediction DDPM loss of one micro-batch with condition dropout (DESIGN §3, §4 schedule),
    each sample's MSE weighted by `loss_weights` (1 for the default ``eps``).

    Image stage: the batch holds single frames (F = 1), the reference net sees the reference alone
    (motion frames = the reference, as for a first clip) and the audio is dropped for every sample.
    """
    unwrapped = getattr(model, "module", model)
    image_stage = train_config.stage == "image"
    # (B, F, C, h, w), (B, C, h, w), (B, M, C, h, w) or None: from the latent cache, or encoded here; VAE latents
    # in `latent_precision` either way
    z0, reference_latent, motion_latents = batch_latents(
        unwrapped.encode_images, batch, motion=not image_stage, dtype=latent_dtype(unwrapped, train_config)
    )
    b, device = z0.shape[0], z0.device
    # drawn on the CPU generator; copied without waiting (the device runs on while the host draws the next)
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=generator).to(device, non_blocking=True)  # (B,)
    eps = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(device, non_blocking=True)
    # (B,) bool each, on the host: the model decides from them without a device sync
    drop_audio, drop_reference = sample_condition_dropout(
        b, train_config.p_drop_audio, train_config.p_drop_both, generator=generator
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


def starting_history(resumed, started, stage: str) -> list[dict]:
    """The stages before this run's (kept in the checkpoint as ``config["stages"]``).

    A resumed run continues its own last entry; a run from ``started`` (``init_from``) extends that
    teacher's history; a new run starts empty. The video stage must start from a teacher that went
    through the image stage.
    """
    if resumed is not None:
        return resumed.teacher_stages[:-1]
    if started is None:
        if stage == "video":
            raise UsageError(
                "`stage` video trains the audio path and temporal layers on top of an image-stage teacher; "
                "pass `init_from` a checkpoint made with `fada train-teacher --stage image`."
            )
        return []
    history = started.teacher_stages
    if stage == "video" and not any(entry["stage"] == "image" for entry in history):
        went = " → ".join(entry["stage"] for entry in history)
        raise UsageError(
            f"`stage` video needs an image-stage teacher, but `init_from` {started.path} went through {went}; "
            "train one with `fada train-teacher --stage image` first."
        )
    return history
