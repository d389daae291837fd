"""The teacher training loop (SPEC §3–5): ε-prediction DDPM loss on tier-A clips.

One optimiser step: for each of ``grad_accum`` micro-batches, draw B clip windows
(`pipelines.data`), encode them, draw t uniform in 0..999 and ε ~ N(0, I), form
z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε with the SD1.5 schedule (`schedulers.add_noise`), drop conditions
(SPEC §3: audio alone with p_drop_audio, both with p_drop_both, from the model config) and
regress the model's ε on the true ε (MSE); then clip gradients, step AdamW and the LR schedule,
update the EMA.

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

import contextlib
import csv
import dataclasses
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from pipelines import checkpoint as ckpt
from pipelines.data import ClipDataset, WindowSampler
from pipelines.errors import CheckpointError, DeviceError, UsageError
from pipelines.manifest import manifest_hash
from pipelines.model import FadaModel, sample_condition_dropout
from pipelines.model_config import ModelConfig
from pipelines.progress import log, make_progress
from pipelines.schedulers import NUM_TRAIN_TIMESTEPS, add_noise, sd15_alphas_cumprod

STAGE = MODE = "teacher"
LOG_FILE = "train_log.csv"
TB_DIR = "tb"
MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every"}  # TrainConfig fields --resume may change


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

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        positive |= {"checkpoint_every": self.checkpoint_every, "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value!r} is not valid; use a whole number >= 1.")
        if not self.lr > 0:
            raise UsageError(f"--lr {self.lr} is not valid; use a positive learning rate such as 1e-4.")
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"--ema {self.ema} is not valid; use a decay in [0, 1) such as 0.999, or 0 for off.")
        if not self.tiers:
            raise UsageError("--tier is empty; pass A, B or a comma-separated list such as A,B.")
        if self.mixed_precision not in MIXED_PRECISION.values():
            raise UsageError(f"mixed_precision {self.mixed_precision!r} is not valid; use no, bf16 or fp16.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise UsageError(f"unknown train config key(s) {unknown}; valid keys: {', '.join(sorted(names))}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


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
    dataset_mb: float  # memory held by the decoded clip cache (per process)
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
) -> TrainResult:
    """Train (or resume training) the teacher on ``manifest`` and write checkpoints to ``out``."""
    out, manifest = Path(out), Path(manifest)
    # 1. check the output folder and, on --resume, the checkpoint in it
    info = _check_out(out, resume, overwrite, pretrained_sd)
    if info is not None:
        model_config, train_config = _resumed_configs(info, model_config, train_config, manifest)
    start_step = 0 if info is None else info.step
    if start_step >= train_config.steps:
        raise UsageError(f"{out} is already at step {start_step} >= --steps {train_config.steps}; pass more --steps.")

    # 2. accelerate (one process, or `accelerate launch` for several)
    accelerator = _make_accelerator(device, train_config)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes

    # 3. data: every clip decoded once, windows drawn by a resumable stream of keys
    dataset = ClipDataset(manifest, model_config, train_config.tiers, quiet=quiet or rank > 0)
    sampler = WindowSampler(len(dataset), train_config.seed)

    # 4. model, optimiser, LR schedule, EMA (restored exactly on --resume)
    if info is not None:
        model = FadaModel.from_checkpoint(out, expect_stage=STAGE)
    elif pretrained_sd is not None:
        model = FadaModel.from_pretrained_sd(model_config, pretrained_sd)
    else:
        torch.manual_seed(train_config.seed)
        model = FadaModel.from_config(model_config)
    model.to(device)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(
        params.values(), lr=train_config.lr, betas=train_config.adam_betas, weight_decay=train_config.weight_decay
    )
    warmup = train_config.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ema = {name: p.detach().clone().float() for name, p in params.items()} if train_config.ema else None
    elapsed = 0.0
    if info is not None:
        elapsed = _restore_state(out, params, optimizer, lr_scheduler, ema, sampler)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    alphas_cumprod = sd15_alphas_cumprod(torch.float32).to(device)
    mhash = manifest_hash(manifest)
    config_record = {"model": model_config.to_dict(), "train": train_config.to_dict()}

    # 5. the loop
    logs = TrainLogs(out, start_step, enabled=accelerator.is_main_process)
    loss_value, began = float("nan"), time.perf_counter()
    with make_progress(quiet or rank > 0) as progress:
        task = progress.add_task("training teacher", total=train_config.steps, completed=start_step)
        for step in range(start_step + 1, train_config.steps + 1):
            micro_losses = []
            for micro in range(train_config.grad_accum):
                keys = sampler.take(train_config.batch_size * world)[rank::world]  # this process's B windows
                batch = {k: v.to(device) for k, v in dataset.batch(keys).items()}
                generator = torch.Generator().manual_seed(step_seed(train_config.seed, step, micro, rank))
                syncing = micro == train_config.grad_accum - 1
                with contextlib.nullcontext() if syncing else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss = teacher_loss(model, batch, alphas_cumprod, generator, model_config)
                    accelerator.backward(loss / train_config.grad_accum)
                micro_losses.append(loss.detach().float())
            if train_config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(list(params.values()), train_config.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                _update_ema(ema, params, train_config.ema)
            loss_value = float(accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean"))
            seconds = elapsed + time.perf_counter() - began
            if step % train_config.log_every == 0 or step == train_config.steps:
                logs.write(step, loss_value, lr, seconds)
            if step % train_config.checkpoint_every == 0 or step == train_config.steps:
                _save(
                    accelerator,
                    out,
                    logs,
                    config_record,
                    step,
                    mhash,
                    params,
                    optimizer,
                    lr_scheduler,
                    ema,
                    sampler,
                    seconds,
                    unwrap=accelerator.unwrap_model(model),
                )
            progress.update(task, advance=1, description=f"training teacher · loss {loss_value:.4f}")
    logs.close()
    seconds = time.perf_counter() - began
    done = train_config.steps - start_step
    if accelerator.is_main_process:
        log(f"trained {done} steps in {seconds:.1f} s ({done / seconds:.2f} steps/s); checkpoint {out}", quiet=quiet)
    return TrainResult(
        checkpoint=out,
        steps=train_config.steps,
        steps_this_run=done,
        final_loss=loss_value,
        seconds=seconds,
        steps_per_s=done / seconds if seconds > 0 else float("inf"),
        processes=world,
        dataset_clips=len(dataset),
        dataset_mb=dataset.memory_bytes / 2**20,
        is_main_process=accelerator.is_main_process,
    )


def teacher_loss(model, batch: dict, alphas_cumprod, generator: torch.Generator, config: ModelConfig) -> torch.Tensor:
    """ε-prediction DDPM loss of one micro-batch with condition dropout (SPEC §3, §4 schedule)."""
    unwrapped = getattr(model, "module", model)
    with torch.no_grad():
        z0 = unwrapped.encode_images(batch["frames"])  # (B, F, C, h, w)
        reference_latent = unwrapped.encode_images(batch["reference"])  # (B, C, h, w)
        motion_latents = unwrapped.encode_images(batch["motion"])  # (B, M, C, h, w)
    b, device = z0.shape[0], z0.device
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=generator).to(device)  # (B,)
    eps = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(device)  # (B, F, C, h, w)
    drop_audio, drop_reference = sample_condition_dropout(
        b, config.p_drop_audio, config.p_drop_both, generator=generator, device=device
    )
    noisy = add_noise(z0.float(), eps, t, alphas_cumprod)  # z_t
    pred = model(
        noisy, t.float(), reference_latent, motion_latents, batch["audio_features"], drop_audio, drop_reference
    )
    return F.mse_loss(pred.float(), eps)


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct 63-bit seed per (seed, step, micro-batch, process)."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, np.uint64)[0] >> 1)


class TrainLogs:
    """``OUT/train_log.csv`` and TensorBoard under ``OUT/tb/`` (main process only)."""

    def __init__(self, out: Path, start_step: int, enabled: bool):
        self.out, self.enabled, self.writer = out, enabled, None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        rows = self._rows()
        kept = [row for row in rows if int(row["step"]) <= start_step]  # drop steps after the resumed checkpoint
        with (out / LOG_FILE).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "loss", "lr", "seconds"])
            writer.writeheader()
            writer.writerows(kept)
        self.open()

    def _rows(self) -> list[dict]:
        path = self.out / LOG_FILE
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / TB_DIR))

    def write(self, step: int, loss: float, lr: float, seconds: float) -> None:
        if not self.enabled:
            return
        with (self.out / LOG_FILE).open("a", newline="") as handle:
            csv.writer(handle).writerow([step, repr(loss), repr(lr), f"{seconds:.3f}"])
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

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
        names = [name for name in (LOG_FILE, TB_DIR) if (self.out / name).exists()]
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


def _save(
    accelerator, out, logs, config_record, step, mhash, params, optimizer, lr_scheduler, ema, sampler, seconds, unwrap
):
    """Write the checkpoint (main process) with the EMA weights as components when EMA is on."""
    if accelerator.is_main_process:
        state = {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "sampler": sampler.state_dict(),
            "seconds": seconds,
            "ema": ema,
            "raw_weights": {n: p.detach().clone() for n, p in params.items()} if ema is not None else None,
        }
        tensors, meta = ckpt.pack_state(state, prefix="train")
        with logs.set_aside(), _weights_swapped(params, ema):
            ckpt.save_checkpoint(
                out,
                stage=STAGE,
                mode=MODE,
                config=config_record,
                components=unwrap.components(),
                step=step,
                manifest_hash=mhash,
                training_state=tensors,
                training_meta=meta,
                extra={
                    "weights": "ema" if ema is not None else "trained",
                    "train_log": LOG_FILE,
                    "tensorboard": TB_DIR,
                },
            )
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _weights_swapped(params: dict[str, torch.nn.Parameter], ema: dict[str, torch.Tensor] | None):
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


def _update_ema(ema: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
    with torch.no_grad():
        for n, p in params.items():
            ema[n].lerp_(p.detach().float(), 1.0 - decay)  # ema ← decay·ema + (1 − decay)·p


def _restore_state(out, params, optimizer, lr_scheduler, ema, sampler) -> float:
    """Load optimizer, LR schedule, RNG, sampler, EMA and raw weights from ``out``; return seconds trained."""
    tensors, meta = ckpt.load_training_state(out)
    state = ckpt.unpack_state(tensors, meta)
    if (state["ema"] is None) != (ema is None):
        raise CheckpointError(f"{out} was trained with a different --ema setting; resume with the same --ema.")
    if ema is not None:
        with torch.no_grad():
            for n, p in params.items():
                ema[n].copy_(p.detach())  # the components hold the EMA weights ...
                p.copy_(state["raw_weights"][n])  # ... the training state the raw ones
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    ckpt.set_rng_state(state["rng"])
    sampler.load_state_dict(state["sampler"])
    return float(state["seconds"])


def _check_out(out: Path, resume: bool, overwrite: bool, pretrained_sd) -> ckpt.CheckpointInfo | None:
    """The checkpoint to resume (None for a new run); refuse to clobber an existing folder."""
    if resume:
        if overwrite or pretrained_sd is not None:
            raise UsageError("--resume continues the checkpoint in --out; drop --overwrite and --pretrained-sd.")
        info = ckpt.load_checkpoint_info(out, expect_stage=STAGE)
        if not info.has_training_state:
            raise CheckpointError(f"{out} holds no training state; it cannot be resumed — train into a new --out.")
        return info
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UsageError(f"--out {out} already exists; pass --resume to continue it or --overwrite to replace it.")
        if out.is_dir() and not (out / ckpt.CHECKPOINT_FILE).is_file():
            raise UsageError(f"--overwrite refuses to delete {out}: it is not a fada checkpoint; pick a new --out.")
        shutil.rmtree(out)
    return None


def _resumed_configs(info, model_config: ModelConfig, train_config: TrainConfig, manifest: Path):
    """The checkpoint's configs; --steps/--checkpoint-every/--log-every may change, nothing else."""
    saved_model = ModelConfig.from_dict(info.config["model"])
    if saved_model != model_config:
        diff = [k for k, v in saved_model.to_dict().items() if model_config.to_dict()[k] != v]
        raise UsageError(
            f"--resume: the model options differ from the checkpoint's in {diff}; pass the same preset and options."
        )
    saved = TrainConfig.from_dict(info.config["train"])
    diff = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(train_config, f.name)
    ]
    if diff:
        raise UsageError(
            f"--resume: training options {diff} differ from the checkpoint's "
            f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)}); "
            "pass the same values or train into a new --out."
        )
    if info.manifest_hash != manifest_hash(manifest):
        raise UsageError(f"--resume: {manifest} is not the manifest {info.path} was trained on; pass that manifest.")
    keep = {k: getattr(train_config, k) for k in RESUMABLE_CHANGES}
    return saved_model, dataclasses.replace(saved, **keep)


def _make_accelerator(device: torch.device, config: TrainConfig) -> Accelerator:
    """An `Accelerator` on ``device`` (single process) or on the launcher's per-process devices."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate's single-process device is the current CUDA device
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # dropped conditions
    )
    if accelerator.num_processes == 1 and accelerator.device.type != device.type:
        raise DeviceError(f"accelerate chose {accelerator.device} but --device {device} was asked for; check CUDA.")
    return accelerator
