"""One way to train: `fit(stage, …)` and the machinery every training stage shares.

`fit` owns what a run does whatever it trains: config resolution (`resolve_configs`: presets, a
preset's training defaults, the caller's overrides, ``resume`` or ``init_from``), the output
check, the `accelerate` set-up, the streamed window data (`pipelines.data`, with the optional
latent cache of `pipelines.latent_cache`), the optimiser, LR schedule and EMA, the exact restore
of a resumed run, CSV + TensorBoard logs that survive checkpoint saves, checkpoints that carry the
full training state (optimizer, LR schedule, RNG, data-stream position, EMA, raw weights) and the
loop itself (`run_training_loop`). A `Stage` is what differs: its config class, how it builds the
model, what trains, the loss of one micro-batch, its log columns and what its checkpoint records
(`pipelines.train_teacher.TeacherStage`, `pipelines.distill.DistillStage`).

Errors name config fields in backticks (`` `steps` ``); the CLI shows them as its flags
(`fada_cli.options.FLAGS`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import math
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from pipelines import checkpoint as ckpt
from pipelines.data import WindowDataset, WindowSampler, default_num_workers, window_batches
from pipelines.devices import DTYPES, bf16_supported, enable_tf32, resolve_device, resolve_dtype
from pipelines.errors import CheckpointError, DeviceError, UsageError
from pipelines.extras import require
from pipelines.manifest import manifest_hash
from pipelines.model import FadaModel
from pipelines.model_config import ModelConfig, get_preset
from pipelines.progress import log, make_progress
from pipelines.rendezvous import CONNECT_TIMEOUT_S, check_rendezvous

MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}
TB_DIR = "tb"
# TrainConfig fields --resume may change: the run length and bookkeeping, gradient checkpointing
# (it recomputes activations in the backward pass; the maths, and so the resumed run, stay the same),
# how the data is loaded (workers, latent cache: the same windows either way) and the processes' timeouts
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "gradient_checkpointing", "num_workers", "latent_cache",
                     "collective_timeout", "connect_timeout"}  # fmt: skip
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
LATENT_PRECISIONS = ("bf16", "fp32")
LOG_FILE = "train_log.csv"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimiser steps in total (a resumed run continues up to this number)
    batch_size: int = 4  # clip windows per process per micro-batch
    grad_accum: int = 1  # micro-batches accumulated per optimiser step
    lr: float = 1e-4  # AdamW learning rate after warm-up
    warmup_steps: int = 0  # linear LR warm-up from 0 over this many steps
    weight_decay: float = 1e-2  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    max_grad_norm: float = 1.0  # gradient clipping norm (0 = off)
    ema: float = 0.0  # EMA decay of the weights (e.g. 0.999); 0 = off
    checkpoint_every: int = 500  # save a checkpoint every N steps (and always at the end)
    log_every: int = 1  # write a train_log.csv / TensorBoard row every N steps
    tiers: tuple[str, ...] = ("A",)  # manifest tiers to train on
    seed: int = 0  # seeds the data stream, ε, t and dropout: same seed, same run
    mixed_precision: str = "no"  # autocast precision: no (fp32) | bf16 | fp16 (weights stay fp32)
    lr_schedule: str = "constant"  # after the warm-up: constant | cosine (to lr_min_ratio·lr at `steps`)
    lr_min_ratio: float = 0.0  # cosine: the final learning rate as a fraction of lr
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    optimizer: str = "adamw"  # adamw (torch) | adamw8bit (bitsandbytes; 8-bit moments, about 1/4 the state)
    num_workers: int | None = None  # DataLoader worker processes per process; None: 0 on the CPU, else up to 4
    latent_cache: str | None = None  # folder of the latent cache (`pipelines.latent_cache`); None: decode clips
    latent_precision: str = "bf16"  # VAE latents are trained in (and cached in) bf16 | fp32, cached or encoded
    # several processes (`accelerate launch`): how long a process waits at a collective (NCCL/gloo) before the run
    # fails — the latent-cache fill and a large checkpoint save run before barriers — and to reach the rendezvous
    collective_timeout: float = 60.0  # minutes
    connect_timeout: float = CONNECT_TIMEOUT_S  # seconds to reach the launcher's rendezvous (MASTER_ADDR:MASTER_PORT)
    # condition dropout (docs/DESIGN.md §3): what the loss drops, per sample
    p_drop_audio: float = 0.10  # probability of dropping the audio alone (null audio tokens)
    p_drop_both: float = 0.05  # probability of dropping audio and reference together
    identity_augment: float = 0.0  # probability that a window gets `data.identity_transform` (colours, flip,
    # shift; the same on its target, reference and motion frames), so identities' colours cannot be memorised
    motion_loss_weight: float = 0.0  # α of `motion_weights`: pixels that change across a window's frames
    # (the mouth, the moving head) weigh up to 1 + α·(their change / the mean change) in the loss; 0 = plain

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        positive |= {"checkpoint_every": self.checkpoint_every, "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"`{name}` {value!r} is not valid; use a whole number >= 1.")
        if not self.lr > 0:
            raise UsageError(f"`lr` {self.lr} is not valid; use a positive learning rate such as 1e-4.")
        if not self.motion_loss_weight >= 0:
            raise UsageError(f"`motion_loss_weight` {self.motion_loss_weight} is not valid; use 0 (off) or more.")
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"`ema` {self.ema} is not valid; use a decay in [0, 1) such as 0.999, or 0 for off.")
        if not self.tiers:
            raise UsageError("`tiers` is empty; pass A, B or a comma-separated list such as A,B.")
        if self.mixed_precision not in MIXED_PRECISION.values():
            raise UsageError(f"`mixed_precision` {self.mixed_precision!r} is not valid; use no, bf16 or fp16.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"`lr_schedule` {self.lr_schedule!r} is not valid; use {' or '.join(LR_SCHEDULES)}.")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise UsageError(f"`lr_min_ratio` {self.lr_min_ratio} is not valid; use a fraction in [0, 1].")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise UsageError(f"`warmup_steps` {self.warmup_steps!r} is not valid; use a whole number >= 0.")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise UsageError(f"`num_workers` {self.num_workers!r} is not valid; use a whole number >= 0.")
        if not 0.0 <= self.identity_augment <= 1.0:
            raise UsageError(f"`identity_augment` {self.identity_augment} is not valid; use a probability in [0, 1].")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"`optimizer` {self.optimizer!r} is not valid; use {' or '.join(OPTIMIZERS)}.")
        if self.latent_precision not in LATENT_PRECISIONS:
            raise UsageError(
                f"`latent_precision` {self.latent_precision!r} is not valid; use {' or '.join(LATENT_PRECISIONS)}."
            )
        for name, unit in (("collective_timeout", "minutes, e.g. 60"), ("connect_timeout", "seconds, e.g. 20")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise UsageError(f"`{name}` {value!r} is not valid; use a positive number of {unit}.")
        for name in ("p_drop_audio", "p_drop_both"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"`{name}` {getattr(self, name)} is not valid; use a probability in [0, 1].")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict):
        """Inverse of `to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise UsageError(f"unknown training config key(s) {unknown}; valid keys: {', '.join(sorted(names))}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct 63-bit seed per (seed, step, micro-batch, process)."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, np.uint64)[0] >> 1)


def make_accelerator(device: torch.device, config: TrainConfig, find_unused_parameters: bool = True) -> Accelerator:
    """An `Accelerator` on ``device`` (single process) or on the launcher's per-process devices.

    Under a launcher the rendezvous is reached first (`check_rendezvous`, ``connect_timeout``), then the
    process group waits ``collective_timeout`` minutes at each collective. DDP: gradients are views of
    its all-reduce buckets (no second copy); ``find_unused_parameters`` (an extra pass over the graph
    every step) only where a micro-batch can leave a trained parameter without a gradient
    (`Stage.may_skip_parameters`).
    """
    check_rendezvous(config.connect_timeout)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate's single-process device is the current CUDA device
    enable_tf32(device)  # fp32 matmuls (the --mixed-precision no path, fp32 parts under autocast) on TF32 cores
    # accelerate keeps one process-wide state, and a second Accelerator with another mixed precision
    # raises; a run in the same Python process (fada demo, FadaPipeline users, tests) starts afresh.
    # The distributed part (PartialState: ranks, devices) is kept.
    AcceleratorState._reset_state()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[ddp, InitProcessGroupKwargs(timeout=timedelta(minutes=config.collective_timeout))],
    )
    if accelerator.num_processes == 1 and accelerator.device.type != device.type:
        raise DeviceError(f"accelerate chose {accelerator.device} but `device` {device} was asked for; check CUDA.")
    return accelerator


def preset_defaults(preset: str, device: torch.device) -> dict:
    """`TrainConfig` fields a new run of ``preset`` starts from, before the command line's options.

    sd15 (860 M parameters per UNet, F = 16 at 512²): batch 1, gradient checkpointing, bf16 autocast
    where the device runs it — what one 80 GB GPU holds (bench/results/sd15.md); the same for hallo (SD1.5
    UNets). Other presets: none.
    """
    if preset not in ("sd15", "hallo"):
        return {}
    precision = "bf16" if bf16_supported(device) else "no"
    return {"batch_size": 1, "gradient_checkpointing": True, "mixed_precision": precision}


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate of optimiser step ``step`` (0-based) as a fraction of ``config.lr``.

    Linear warm-up over ``warmup_steps``, then constant, or a half cosine from 1 down to
    ``lr_min_ratio`` at ``steps`` (Loshchilov & Hutter 2017, SGDR, without restarts). A resumed run
    that raises ``steps`` stretches the rest of the cosine.
    """
    warmup = config.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    return config.lr_min_ratio + (1.0 - config.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: dict[str, torch.nn.Parameter], config: TrainConfig):
    """AdamW (``config.optimizer``) over ``params`` and its LR schedule (`lr_factor`).

    ``adamw8bit``: bitsandbytes' AdamW with block-wise 8-bit moments (Dettmers et al. 2022, "8-bit
    Optimizers via Block-wise Quantization"); tensors under 4096 elements keep 32-bit moments.
    """
    kwargs = {"lr": config.lr, "betas": config.adam_betas, "weight_decay": config.weight_decay}
    if config.optimizer == "adamw8bit":
        bitsandbytes = require("bitsandbytes", "`optimizer` adamw8bit")
        optimizer = bitsandbytes.optim.AdamW8bit(params.values(), **kwargs)
    else:
        optimizer = torch.optim.AdamW(params.values(), **kwargs)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, config=config))
    return optimizer, lr_scheduler


# --- logs ------------------------------------------------------------------------------------------


class TrainLogs:
    """CSV tables and TensorBoard events (``OUT/tb/``) kept in the checkpoint folder (main process only).

    ``tables`` maps a CSV file name to its columns; the first column of every table is ``step``.
    On a resume, rows after the checkpoint's step are dropped. ``keep`` names other files in OUT
    (plots) that must survive checkpoint saves.
    """

    def __init__(
        self,
        out: Path,
        start_step: int,
        enabled: bool,
        tables: dict[str, Sequence[str]],
        keep: Iterable[str] = (),
    ):
        self.out, self.enabled, self.writer = out, enabled, None
        self.tables = {name: list(columns) for name, columns in tables.items()}
        self.keep = tuple(keep)
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        for name, columns in self.tables.items():
            kept = [row for row in self._rows(name) if int(row["step"]) <= start_step]  # drop steps after resume
            with (out / name).open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(kept)
        self.open()

    def _rows(self, name: str) -> list[dict]:
        path = self.out / name
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / TB_DIR))

    def write_rows(self, name: str, rows: Iterable[Sequence]) -> None:
        """Append already-formatted rows (one value per column) to table ``name``."""
        if not self.enabled:
            return
        with (self.out / name).open("a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        if self.enabled:
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @contextlib.contextmanager
    def set_aside(self):
        """Move the logs out of OUT while a checkpoint save replaces the folder, then back in."""
        self.close()
        stash = self.out.with_name(f".{self.out.name}.logs-{uuid.uuid4().hex[:8]}")
        stash.mkdir()
        names = [name for name in (*self.tables, TB_DIR, *self.keep) if (self.out / name).exists()]
        for name in names:
            shutil.move(self.out / name, stash / name)
        try:
            yield
        finally:
            self.out.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.move(stash / name, self.out / name)
            stash.rmdir()
            self.open()


# --- EMA -------------------------------------------------------------------------------------------


def make_ema(params: dict[str, torch.nn.Parameter], decay: float) -> dict[str, torch.Tensor] | None:
    return {name: p.detach().clone().float() for name, p in params.items()} if decay else None


def update_ema(ema: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·p for every parameter, in one multi-tensor kernel per device and dtype."""
    with torch.no_grad():
        names = list(params)
        torch._foreach_lerp_([ema[n] for n in names], [params[n].detach().float() for n in names], 1.0 - decay)


@contextlib.contextmanager
def weights_swapped(params: dict[str, torch.nn.Parameter], ema: dict[str, torch.Tensor] | None):
    """Temporarily load the EMA weights into the model (no-op without EMA)."""
    if ema is None:
        yield
        return
    raw = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ema[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(raw[n])


# --- checkpoints with training state ---------------------------------------------------------------


@dataclass
class TrainingState:
    """The pieces of a run that a checkpoint must hold for an exact ``--resume``."""

    params: dict[str, torch.nn.Parameter]  # trainable parameters by name
    optimizer: torch.optim.Optimizer  # AdamW
    lr_scheduler: object  # LambdaLR
    ema: dict[str, torch.Tensor] | None  # EMA weights (None = off)
    sampler: object  # WindowSampler (data-stream position)


def optimizer_step(accelerator: Accelerator, state: TrainingState, config: TrainConfig) -> float:
    """Clip the gradients, step the optimiser and the LR schedule, zero the gradients, update the EMA.

    Returns the learning rate the step used.
    """
    if config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(list(state.params.values()), config.max_grad_norm)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        update_ema(state.ema, state.params, config.ema)
    return lr


def save_training_checkpoint(
    accelerator, out: Path, logs: TrainLogs, state: TrainingState, unwrap, seconds: float, **record
) -> None:
    """Write the checkpoint (main process) with the EMA weights as components when EMA is on.

    ``record``: the `ckpt.save_checkpoint` keywords (stage, mode, config, step, manifest_hash,
    teacher_hash, extra); the extra gets ``weights`` and the log names added.
    """
    if accelerator.is_main_process:
        payload = {
            "optimizer": state.optimizer.state_dict(),
            "lr_scheduler": state.lr_scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "sampler": state.sampler.state_dict(),
            "seconds": seconds,
            "ema": state.ema,
            "raw_weights": {n: p.detach().clone() for n, p in state.params.items()} if state.ema is not None else None,
        }
        tensors, meta = ckpt.pack_state(payload, prefix="train")
        tables = list(logs.tables)
        extra = {"weights": "ema" if state.ema is not None else "trained", "train_log": tables[0]}
        extra |= {"tensorboard": TB_DIR, **record.pop("extra", {})}
        with logs.set_aside(), weights_swapped(state.params, state.ema):
            ckpt.save_checkpoint(
                out,
                components=unwrap.components(),
                training_state=tensors,
                training_meta=meta,
                extra=extra,
                **record,
            )
    accelerator.wait_for_everyone()


def restore_training_state(out: Path, state: TrainingState) -> float:
    """Load optimizer, LR schedule, RNG, sampler, EMA and raw weights from ``out``; return seconds trained."""
    tensors, meta = ckpt.load_training_state(out)
    saved = ckpt.unpack_state(tensors, meta)
    if (saved["ema"] is None) != (state.ema is None):
        raise CheckpointError(f"{out} was trained with a different `ema` setting; resume with the same `ema`.")
    if state.ema is not None:
        with torch.no_grad():
            for n, p in state.params.items():
                state.ema[n].copy_(p.detach())  # the components hold the EMA weights ...
                p.copy_(saved["raw_weights"][n])  # ... the training state the raw ones
    state.optimizer.load_state_dict(saved["optimizer"])
    state.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    ckpt.set_rng_state(saved["rng"])
    state.sampler.load_state_dict(saved["sampler"])
    return float(saved["seconds"])


# --- configs: one resolution for the CLI, fada demo, the benches and the library ------------------


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


def sample_condition_dropout(batch_size: int, p_audio: float, p_both: float, generator=None):
    """Condition dropout (docs/DESIGN.md §3): audio alone with ``p_audio``, audio and reference with ``p_both``.

    Returns ``(drop_audio, drop_reference)``, each (B,) bool on the CPU (the host), drawn on the CPU
    generator: `FadaModel` decides from them what to run and counts NFE without waiting for the device.
    """
    u = torch.rand(batch_size, generator=generator)
    drop_both = u < p_both
    drop_audio = u < p_both + p_audio  # audio alone for u in [p_both, p_both + p_audio)
    return drop_audio, drop_both


def latent_dtype(model: FadaModel, config: TrainConfig) -> torch.dtype | None:
    """The dtype a VAE model's training latents are rounded to (`TrainConfig.latent_precision`), cached or encoded
    alike; None in pixel space, where the images themselves are the latents."""
    return None if getattr(model, "vae", None) is None else DTYPES[config.latent_precision]


def model_overrides_applied(config: ModelConfig, overrides: dict) -> ModelConfig:
    """``config`` with the given `ModelConfig` fields replaced; ``audio_encoder`` ('mel' | 'wav2vec2', with
    ``audio_encoder_path``) also sets ``audio_feature_dim`` to match the encoder."""
    overrides = dict(overrides)
    if "audio_encoder" in overrides:
        from pipelines.audio import with_audio_encoder

        name, path = overrides.pop("audio_encoder"), overrides.pop("audio_encoder_path", None)
        config = with_audio_encoder(config, name, path)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown := sorted(set(overrides) - names):
        raise UsageError(f"unknown model config key(s) {unknown}; valid keys: {', '.join(sorted(names))}.")
    return dataclasses.replace(config, **overrides)


@dataclass(frozen=True)
class Resolved:
    """The configs of one `fit` call, and the checkpoints they came from."""

    model_config: ModelConfig
    config: TrainConfig  # the stage's `config_class`
    resumed: ckpt.CheckpointInfo | None  # the checkpoint in `out` that a resumed run continues
    started: ckpt.CheckpointInfo | None  # the checkpoint whose weights a new run starts from (`init_from`)


def resolve_configs(
    stage: Stage,
    out: str | Path,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    model_overrides: dict | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    device: torch.device | None = None,
    manifest: str | Path | None = None,
) -> Resolved:
    """The model and training configs a run of ``stage`` trains with. Reads checkpoints, writes nothing.

    - a new run: the stage's starting model config (the teacher: ``preset``, default demo; distillation:
      its teacher's), the preset's training defaults (`preset_defaults`), then ``overrides``;
    - ``init_from``: a new run from that checkpoint's weights and model config (``preset`` and
      ``model_overrides`` may not change it), training defaults as for a new run;
    - ``resume``: the configs saved in the checkpoint in ``out``; ``overrides`` may change only
      `RESUMABLE_CHANGES` (the run length, bookkeeping, how data is loaded).

    ``overrides`` are `TrainConfig` fields (of ``stage.config_class``), ``model_overrides`` `ModelConfig`
    fields, both as given by a caller (the CLI's options, `fada demo`'s recipe, a bench).
    """
    out = Path(out)
    overrides, model_overrides = dict(overrides or {}), dict(model_overrides or {})
    device = device if device is not None else torch.device("cpu")
    if overrides.get("mixed_precision") is not None:  # any dtype name (fp32, bf16, …) as accelerate's, on this device
        overrides["mixed_precision"] = MIXED_PRECISION[resolve_dtype(overrides["mixed_precision"], device)]
    if init_from is not None and Path(init_from).absolute() == out.absolute():
        raise UsageError(f"`init_from` {init_from} is the `out` folder; to continue it use `resume`.")
    resumed = ckpt.load_checkpoint_info(out, expect_stage=stage.name) if resume else None
    if resumed is not None and not resumed.has_training_state:
        raise CheckpointError(f"{out} holds no training state; it cannot be resumed — train into a new `out`.")
    started = ckpt.load_checkpoint_info(init_from, expect_stage=stage.name) if init_from is not None else None
    stage.begin(resumed)
    # 1. the model config: the checkpoint's, or the stage's for a new run; then the given fields
    source = resumed or started
    model_config = ModelConfig.from_dict(source.config["model"]) if source else stage.base_model_config(preset)
    if preset is not None and preset != model_config.preset:
        where = source.path if source else "the starting model"
        raise UsageError(f"`preset` {preset} differs from {where}'s {model_config.preset!r}; drop `preset`.")
    model_config = model_overrides_applied(model_config, model_overrides)
    if started is not None and (saved := ModelConfig.from_dict(started.config["model"])) != model_config:
        diff = [k for k, v in saved.to_dict().items() if model_config.to_dict()[k] != v]
        raise UsageError(
            f"`init_from` {init_from}: its model options differ in {diff}; drop the options that change them."
        )
    # 2. the training config: the checkpoint's, or the defaults (and the preset's) for a new run
    cls = stage.config_class
    if resumed is not None:
        config = dataclasses.replace(cls.from_dict(resumed.config["train"]), **overrides)
    else:
        config = cls.from_dict(preset_defaults(model_config.preset, device) | overrides)
    model_config = stage.model_config(model_config, config)
    if resumed is not None:
        model_config, config = resumed_configs(resumed, model_config, config, manifest)
    resolved = Resolved(model_config, config, resumed, started)
    stage.check(resolved)
    return resolved


def resumed_configs(info, model_config: ModelConfig, train_config: TrainConfig, manifest: Path | None):
    """The checkpoint's configs; only `RESUMABLE_CHANGES` may differ, and the manifest must be the same."""
    saved_model = ModelConfig.from_dict(info.config["model"])
    if saved_model != model_config:
        diff = [k for k, v in saved_model.to_dict().items() if model_config.to_dict()[k] != v]
        raise UsageError(
            f"`resume`: the model options differ from the checkpoint's in {diff}; pass the same preset and options."
        )
    cls = type(train_config)
    saved = cls.from_dict(info.config["train"])
    diff = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(train_config, f.name)
    ]
    if diff:
        raise UsageError(
            f"`resume`: training options {diff} differ from the checkpoint's "
            f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)}); "
            "pass the same values or train into a new `out`."
        )
    if manifest is not None and info.manifest_hash != manifest_hash(manifest):
        raise UsageError(f"`resume`: {manifest} is not the manifest {info.path} was trained on; pass that manifest.")
    keep = {k: getattr(train_config, k) for k in RESUMABLE_CHANGES}
    return saved_model, dataclasses.replace(saved, **keep)


def check_out(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to clobber an existing folder for a new run; True when ``overwrite`` must replace a checkpoint there."""
    if resume or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not overwrite:
        raise UsageError(f"`out` {out} already exists; pass `resume` to continue it or `overwrite` to replace it.")
    if out.is_dir() and not (out / ckpt.CHECKPOINT_FILE).is_file():
        raise UsageError(f"`overwrite` refuses to delete {out}: it is not a fada checkpoint; pick a new `out`.")
    return True


def prepare_out(out: Path, resume: bool, overwrite: bool, accelerator) -> None:
    """`check_out` on every process (each raises the same error); an old checkpoint is deleted by the main
    process alone, once every process has looked at it, and the others wait until it is gone."""
    if not check_out(out, resume, overwrite):
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(out)
    accelerator.wait_for_everyone()


# --- a training stage ------------------------------------------------------------------------------


class Stage:
    """What one kind of training run does differently; `fit` does the rest.

    A stage names the checkpoints it writes and resumes (``name``), its config class, how it builds
    the model of a new run, which parameters train, the loss of one micro-batch, its log columns and
    what its checkpoint records. The teacher (`pipelines.train_teacher.TeacherStage`) and
    distillation (`pipelines.distill.DistillStage`) are stages; a new stage is one file.
    """

    name = "teacher"  # checkpoint stage written and resumed (`checkpoint.STAGES`)
    config_class: type[TrainConfig] = TrainConfig
    logs: dict[str, tuple[str, ...]] = {LOG_FILE: ("step", "loss", "lr", "seconds")}  # first: one row per step
    keep: tuple[str, ...] = ()  # other files of OUT that survive checkpoint saves (plots)
    summary_names: tuple[str, ...] = ("loss",)  # step means reduced over processes: log row, progress, result
    tensorboard_prefix = "train"
    starting_weights: tuple[str, ...] = ()  # stage options that, like `init_from`, give a new run's weights

    # configs
    def begin(self, resumed: ckpt.CheckpointInfo | None) -> None:
        """Read what config resolution needs besides the run's own checkpoints (distillation: its teacher)."""

    def base_model_config(self, preset: str | None) -> ModelConfig:
        """The model config of a new run that starts from no checkpoint."""
        return get_preset(preset or DEFAULT_PRESET)

    def model_config(self, model_config: ModelConfig, config: TrainConfig) -> ModelConfig:
        """The model config once the training config is known (a student adds its CFG conditioning)."""
        return model_config

    def check(self, resolved: Resolved) -> None:
        """Refuse configs that do not go together (before anything is written)."""

    def may_skip_parameters(self, config: TrainConfig) -> bool:
        """Whether a micro-batch can leave a trained parameter without a gradient, so that DDP must look for
        unused parameters every step. Here: the reference net is skipped when every sample of a process's
        micro-batch drops the reference (``p_drop_both`` > 0), unless the stage freezes it."""
        return config.p_drop_both > 0

    # the model
    def new_model(self, run: Run) -> torch.nn.Module:
        """The model of a new run that starts from no checkpoint."""
        torch.manual_seed(run.config.seed)
        return FadaModel.from_config(run.model_config)

    def build_model(self, run: Run) -> torch.nn.Module:
        """The checkpoint's model on resume, ``init_from``'s for a new run from it, else `new_model`."""
        source = run.resolved.resumed or run.resolved.started
        model = FadaModel.from_checkpoint(source.path, expect_stage=self.name) if source else self.new_model(run)
        return model.to(run.device)

    def trainable(self, model: torch.nn.Module, config: TrainConfig) -> dict[str, torch.nn.Parameter]:
        """The parameters the optimiser steps, by name (freezing the others)."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def frames(self, config: TrainConfig) -> int | None:
        """Frames per training window (None: the model's F)."""
        return None

    def encoder(self, model: torch.nn.Module) -> torch.nn.Module:
        """The `FadaModel` whose codec encodes the training windows (for the latent cache)."""
        return model

    # one micro-batch
    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """(loss, record of per-sample tensors) of one micro-batch; runs under autocast."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    # logs and checkpoints
    def task_name(self, config: TrainConfig) -> str:
        return f"training {self.name}"

    def write_log(self, run: Run, logs: TrainLogs, step: int, records: list[dict], means: dict, lr: float,
                  seconds: float) -> None:  # fmt: skip
        """One row of the per-step log (the step means, lr, seconds) and its TensorBoard scalars.

        A collective in multi-process runs: every process calls it."""
        first = next(iter(self.logs))
        row = [step, *(repr(means[name]) for name in self.summary_names), repr(lr), f"{seconds:.3f}"]
        logs.write_rows(first, [row])
        logs.scalars(step, {f"{self.tensorboard_prefix}/{k}": v for k, v in means.items()})
        logs.scalars(step, {f"{self.tensorboard_prefix}/lr": lr})

    def mode(self, config: TrainConfig) -> str:
        """The checkpoint's mode."""
        return self.name

    def record(self, run: Run, step: int) -> dict:
        """What the checkpoint records besides the configs: ``config`` (more config entries),
        ``teacher_hash``, ``extra``; the result's summary gets ``summary``."""
        return {}

    def saved(self, run: Run) -> None:
        """After each checkpoint save, on the main process (distillation redraws its R histogram)."""


DEFAULT_PRESET = "demo"


# --- fit ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One `fit` call once its configs are resolved: folders, processes, data and the time trained."""

    out: Path
    manifest: Path
    resolved: Resolved
    device: torch.device  # the requested device, then this process's accelerator device
    quiet: bool
    accelerator: Accelerator | None = None
    dataset: WindowDataset | None = None
    start_step: int = 0  # 0 for a new run, the checkpoint's step on resume
    elapsed: float = 0.0  # seconds trained by earlier runs of this checkpoint

    @property
    def config(self) -> TrainConfig:
        return self.resolved.config

    @property
    def model_config(self) -> ModelConfig:
        return self.resolved.model_config

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


@dataclass(frozen=True)
class FitResult:
    checkpoint: Path  # the checkpoint folder
    stage: str  # teacher | student
    mode: str  # the checkpoint's mode
    steps: int  # optimiser steps done in total
    steps_this_run: int  # steps done by this call (fewer than `steps` after resume)
    means: dict[str, float]  # the last step's means over micro-batches and processes ("loss", the stage's names)
    seconds: float  # wall time of this call's loop
    processes: int  # accelerate processes
    dataset_clips: int  # clips in the training set
    is_main_process: bool  # False on the other processes of a multi-process run (they print nothing)
    logs: dict[str, str]  # log files and plots written in the checkpoint folder, by name
    extra: dict  # what the stage adds to the summary (distillation: its teacher and its hash)

    @property
    def final_loss(self) -> float:
        return self.means["loss"]

    @property
    def steps_per_s(self) -> float:
        return self.steps_this_run / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> dict:
        """JSON-ready: what the commands print with ``--json``."""
        finals = {f"final_{name}": value for name, value in self.means.items()}
        return {"checkpoint": str(self.checkpoint), "stage": self.stage, "mode": self.mode, "steps": self.steps,
                "steps_this_run": self.steps_this_run, **finals, "seconds": round(self.seconds, 3),
                "steps_per_s": round(self.steps_per_s, 4), "processes": self.processes, **self.extra,
                **self.logs}  # fmt: skip


def fit(
    stage: Stage,
    manifest: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    model_overrides: dict | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    quiet: bool = False,
) -> FitResult:
    """Train (or resume training) ``stage`` on ``manifest`` and write its checkpoints to ``out``.

    Configs are resolved by `resolve_configs` (``preset``, ``overrides`` of the stage's `TrainConfig`
    fields, ``model_overrides`` of `ModelConfig` fields, ``resume`` or ``init_from``). Every random
    draw of step s comes from generators seeded by (seed, s, micro-batch, process) and the data
    stream is a position counter, so a resumed run replays the uninterrupted one exactly. Multi-GPU
    runs go through `accelerate launch`; each process draws its own B windows.
    """
    out, manifest = Path(out), Path(manifest)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    # 1. the configs (nothing written yet)
    given = [name for name in stage.starting_weights if getattr(stage, name, None) is not None]
    if resume and (overwrite or init_from is not None or given):
        drop = ["`overwrite`", *(f"`{name}`" for name in stage.starting_weights), "`init_from`"]
        raise UsageError(f"`resume` continues the checkpoint in `out`; drop {', '.join(drop[:-1])} and {drop[-1]}.")
    if init_from is not None and given:
        raise UsageError(f"`init_from` and `{given[0]}` both give starting weights; pass one of them.")
    resolved = resolve_configs(stage, out, preset=preset, overrides=overrides, model_overrides=model_overrides,
                               resume=resume, init_from=init_from, device=device, manifest=manifest)  # fmt: skip
    config, run = resolved.config, Run(out, manifest, resolved, device, quiet)
    run.start_step = resolved.resumed.step if resolved.resumed else 0
    if run.start_step >= config.steps:
        raise UsageError(f"{out} is already at step {run.start_step} >= `steps` {config.steps}; pass more `steps`.")
    # 2. accelerate (one process, or `accelerate launch` for several); then the output folder, cleared by one process
    run.accelerator = make_accelerator(device, config, stage.may_skip_parameters(config))
    run.device = run.accelerator.device
    prepare_out(out, resume, overwrite, run.accelerator)
    # 3. the data: clips decoded when a window of them is drawn
    run.dataset = WindowDataset(manifest, resolved.model_config, config.tiers, num_frames=stage.frames(config),
                                identity_augment=config.identity_augment)  # fmt: skip
    sampler = WindowSampler(len(run.dataset), config.seed)
    # 4. model, trainable parameters, optimiser, LR schedule, EMA (restored exactly on resume); the latent cache
    model = stage.build_model(run)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = stage.trainable(model, config)
    optimizer, lr_scheduler = make_optimizer(params, config)
    state = TrainingState(params, optimizer, lr_scheduler, make_ema(params, config.ema), sampler)
    if resolved.resumed is not None:
        run.elapsed = restore_training_state(out, state)
    attach_latent_cache(run, stage.encoder(model))
    # the LR schedule stays outside `prepare`: accelerate would step it once per process at every optimiser
    # step (its `split_batches=False` rule), ending the warm-up N× too early with N processes
    model, state.optimizer = run.accelerator.prepare(model, optimizer)
    # 5. the loop
    logs = TrainLogs(out, run.start_step, run.accelerator.is_main_process, stage.logs, keep=stage.keep)
    done = run_training_loop(run, stage, model, state, logs)
    main = run.accelerator.is_main_process
    if main:
        rate = f"{done.steps_done / done.seconds:.2f} steps/s" if done.seconds > 0 else "no steps"
        log(f"trained {done.steps_done} steps in {done.seconds:.1f} s ({rate}); checkpoint {out}", quiet=quiet)
    record = stage.record(run, config.steps)
    names = {"train_log": next(iter(stage.logs)), **record.get("extra", {})}
    return FitResult(out, stage.name, stage.mode(config), config.steps, done.steps_done, done.means, done.seconds,
                     run.world, len(run.dataset), main, {k: str(out / v) for k, v in names.items()},
                     record.get("summary", {}))  # fmt: skip


def attach_latent_cache(run: Run, encoder) -> None:
    """With ``config.latent_cache``: open (or start) the cache for this manifest and ``encoder``'s codec
    and audio encoder, encode the clips it lacks (each process its share, on its device) and let the
    dataset read its windows from it."""
    if run.config.latent_cache is None:
        return
    from pipelines.latent_cache import cache_key, fill_cache, open_cache

    dataset, accelerator = run.dataset, run.accelerator
    key = cache_key(dataset.manifest, dataset.config, encoder.vae, DTYPES[run.config.latent_precision])
    if accelerator.is_main_process:
        open_cache(run.config.latent_cache, key, create=True)
    accelerator.wait_for_everyone()
    cache = open_cache(run.config.latent_cache, key, create=False)
    missing = cache.missing(dataset.clip_ids)
    accelerator.wait_for_everyone()  # every process has listed the same missing clips before any is written
    quiet = run.quiet or run.rank > 0
    fill_cache(cache, dataset, encoder.encode_images, run.device, quiet=quiet, todo=missing[run.rank :: run.world])
    accelerator.wait_for_everyone()
    dataset.cache = cache


def save_stage_checkpoint(run: Run, stage: Stage, model, state: TrainingState, logs: TrainLogs, step: int,
                          seconds: float) -> None:  # fmt: skip
    """The checkpoint of ``step``: configs, the stage's record, the full training state."""
    record = stage.record(run, step)
    config = {"model": run.model_config.to_dict(), "train": run.config.to_dict()}
    resumed, started = run.resolved.resumed, run.resolved.started
    init_from = str(started.path) if started else (resumed.config.get("init_from") if resumed else None)
    if init_from is not None:
        config["init_from"] = init_from  # provenance: the weights step 0 started from
    save_training_checkpoint(
        run.accelerator,
        run.out,
        logs,
        state,
        run.accelerator.unwrap_model(model),
        seconds,
        stage=stage.name,
        mode=stage.mode(run.config),
        config=config | record.get("config", {}),
        step=step,
        manifest_hash=manifest_hash(run.manifest),
        teacher_hash=record.get("teacher_hash"),
        extra=record.get("extra", {}),
    )
    if run.accelerator.is_main_process:
        stage.saved(run)


def step_means(accelerator: Accelerator, records: list[dict], names: Sequence[str]) -> dict[str, float]:
    """The step's mean of each record entry in ``names`` over its micro-batches and every process (a collective:
    every process calls it; one all-reduce and one device-to-host copy for all of them)."""
    stacked = torch.stack([torch.stack([r[name].float().mean() for r in records]).mean() for name in names])
    values = accelerator.reduce(stacked, "mean").tolist()
    return dict(zip(names, values, strict=True))


@dataclass(frozen=True)
class LoopResult:
    means: dict[str, float]  # the last step's means over micro-batches and processes (at least "loss")
    seconds: float  # wall time of this call's loop
    steps_done: int  # optimiser steps done by this call


def run_training_loop(run: Run, stage: Stage, model: torch.nn.Module, state: TrainingState,
                      logs: TrainLogs) -> LoopResult:  # fmt: skip
    """The optimiser steps from ``run.start_step`` + 1 to ``config.steps``, shared by every stage.

    Per step, for each of ``grad_accum`` micro-batches: this process's B windows (`window_batches`,
    DataLoader workers), a generator seeded by (seed, step, micro, process), ``stage.loss(model,
    batch, generator)`` → (loss, record of per-sample tensors) under autocast, backward (gradients
    synced on the last micro-batch only); then `optimizer_step`. Every ``log_every`` steps (and at
    the last) ``stage.summary_names`` — record entries and ``loss`` — are averaged over micro-batches
    and processes and read on the host (`step_means`), and `Stage.write_log` writes them: the other
    steps never wait for the device. Every ``checkpoint_every`` steps and at the end a checkpoint. The
    seconds logged count the training time of earlier runs of the checkpoint too.
    """
    config, accelerator, device, rank, world = run.config, run.accelerator, run.device, run.rank, run.world
    workers = config.num_workers if config.num_workers is not None else default_num_workers(device)
    batches = window_batches(run.dataset, state.sampler, config.batch_size, rank, world, workers,
                             pin_memory=device.type == "cuda")  # fmt: skip
    means, began = {name: float("nan") for name in stage.summary_names}, time.perf_counter()
    task_name = stage.task_name(config)
    with make_progress(run.quiet or rank > 0) as progress:
        task = progress.add_task(task_name, total=config.steps, completed=run.start_step)
        for step in range(run.start_step + 1, config.steps + 1):
            records = []
            for micro in range(config.grad_accum):
                state.sampler.advance(config.batch_size * world)  # the stream position a checkpoint saves
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                generator = torch.Generator().manual_seed(step_seed(config.seed, step, micro, rank))
                syncing = micro == config.grad_accum - 1
                with contextlib.nullcontext() if syncing else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss, record = stage.loss(model, batch, generator)
                    accelerator.backward(loss / config.grad_accum)
                records.append({"micro": micro, "loss": loss.detach().float(), **record})
            lr = optimizer_step(accelerator, state, config)
            seconds = run.elapsed + time.perf_counter() - began
            if step % config.log_every == 0 or step == config.steps:  # the only host reads of the step's values
                means = step_means(accelerator, records, stage.summary_names)
                stage.write_log(run, logs, step, records, means, lr, seconds)
                progress.update(task, description=f"{task_name} · loss {means['loss']:.4f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_stage_checkpoint(run, stage, model, state, logs, step, seconds)
            progress.update(task, advance=1)
    batches.close()  # stops the DataLoader workers
    logs.close()
    return LoopResult(means, time.perf_counter() - began, config.steps - run.start_step)
