"""Training-loop machinery shared by `train_teacher` and `distill`.

What both loops need and neither should copy: the ``TrainConfig`` base (optimiser, schedule,
checkpointing, logging and data-loading fields), the `accelerate` set-up, the streamed window
data (`pipelines.data`, with the optional latent cache of `pipelines.latent_cache`), per-step
seeds, the EMA, CSV + TensorBoard logs that survive checkpoint saves, checkpoints that carry the
full training state (optimizer, LR schedule, RNG, data-stream position, EMA, raw weights) so that
``--resume`` replays the uninterrupted run exactly — and the loop itself (`run_training_loop`):
each stage gives it only its per-micro-batch loss and its log and checkpoint writers.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs

from pipelines import checkpoint as ckpt
from pipelines.data import WindowDataset, WindowSampler, default_num_workers, window_batches
from pipelines.devices import bf16_supported, enable_tf32
from pipelines.errors import CheckpointError, DeviceError, UsageError
from pipelines.manifest import manifest_hash
from pipelines.model_config import ModelConfig
from pipelines.progress import make_progress

MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}
TB_DIR = "tb"
# TrainConfig fields --resume may change: the run length and bookkeeping, gradient checkpointing
# (it recomputes activations in the backward pass; the maths, and so the resumed run, stay the same)
# and how the data is loaded (workers, latent cache: the same windows either way)
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "gradient_checkpointing", "num_workers", "latent_cache"}
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")


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
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"--lr-schedule {self.lr_schedule!r} is not valid; use {' or '.join(LR_SCHEDULES)}.")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise UsageError(f"lr_min_ratio {self.lr_min_ratio} is not valid; use a fraction in [0, 1].")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps {self.warmup_steps!r} is not valid; use a whole number >= 0.")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise UsageError(f"--num-workers {self.num_workers!r} is not valid; use a whole number >= 0.")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer!r} is not valid; use {' or '.join(OPTIMIZERS)}.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict):
        """Inverse of `to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise UsageError(f"unknown train config key(s) {unknown}; valid keys: {', '.join(sorted(names))}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct 63-bit seed per (seed, step, micro-batch, process)."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, np.uint64)[0] >> 1)


def make_accelerator(device: torch.device, config: TrainConfig) -> Accelerator:
    """An `Accelerator` on ``device`` (single process) or on the launcher's per-process devices."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate's single-process device is the current CUDA device
    enable_tf32(device)  # fp32 matmuls (the --mixed-precision no path, fp32 parts under autocast) on TF32 cores
    # accelerate keeps one process-wide state, and a second Accelerator with another mixed precision
    # raises; a run in the same Python process (fada demo, FadaPipeline users, tests) starts afresh.
    # The distributed part (PartialState: ranks, devices) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # dropped conditions
    )
    if accelerator.num_processes == 1 and accelerator.device.type != device.type:
        raise DeviceError(f"accelerate chose {accelerator.device} but --device {device} was asked for; check CUDA.")
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
        try:
            import bitsandbytes
        except ImportError as exc:
            raise UsageError("--optimizer adamw8bit needs bitsandbytes; pip install bitsandbytes.") from exc
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
    with torch.no_grad():
        for n, p in params.items():
            ema[n].lerp_(p.detach().float(), 1.0 - decay)  # ema ← decay·ema + (1 − decay)·p


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
        raise CheckpointError(f"{out} was trained with a different --ema setting; resume with the same --ema.")
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


def check_out(out: Path, resume: bool, overwrite: bool, stage: str) -> ckpt.CheckpointInfo | None:
    """The checkpoint to resume (None for a new run); refuse to clobber an existing folder."""
    if resume:
        if overwrite:
            raise UsageError("--resume continues the checkpoint in --out; drop --overwrite.")
        info = ckpt.load_checkpoint_info(out, expect_stage=stage)
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


def resumed_configs(info, model_config: ModelConfig, train_config: TrainConfig, manifest: Path):
    """The checkpoint's configs; --steps/--checkpoint-every/--log-every may change, nothing else.

    ``train_config``'s class (a `TrainConfig` or a subclass) reads the saved ``config["train"]``.
    """
    saved_model = ModelConfig.from_dict(info.config["model"])
    if saved_model != model_config:
        diff = [k for k, v in saved_model.to_dict().items() if model_config.to_dict()[k] != v]
        raise UsageError(
            f"--resume: the model options differ from the checkpoint's in {diff}; pass the same preset and options."
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
            f"--resume: training options {diff} differ from the checkpoint's "
            f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)}); "
            "pass the same values or train into a new --out."
        )
    if info.manifest_hash != manifest_hash(manifest):
        raise UsageError(f"--resume: {manifest} is not the manifest {info.path} was trained on; pass that manifest.")
    keep = {k: getattr(train_config, k) for k in RESUMABLE_CHANGES}
    return saved_model, dataclasses.replace(saved, **keep)


@dataclass
class LoopSetup:
    """What a training loop starts from: where it resumes, its accelerate processes, its data."""

    start_step: int  # 0 for a new run, the checkpoint's step on --resume
    accelerator: Accelerator
    device: torch.device  # the accelerator's device for this process
    rank: int  # this process's index
    world: int  # number of processes
    dataset: WindowDataset  # the manifest's clips of the configured tiers, decoded when drawn
    sampler: WindowSampler  # resumable stream of window keys


def set_up_loop(out: Path, info, manifest: Path, model_config: ModelConfig, config: TrainConfig,
                device: torch.device, quiet: bool, num_frames: int | None = None) -> LoopSetup:  # fmt: skip
    """Resume step, accelerate (one process, or `accelerate launch` for several) and the clip data.

    ``num_frames``: frames per training window (None = the model's F; 1 for the image stage).
    """
    start_step = 0 if info is None else info.step
    if start_step >= config.steps:
        raise UsageError(f"{out} is already at step {start_step} >= --steps {config.steps}; pass more --steps.")
    accelerator = make_accelerator(device, config)
    rank, world = accelerator.process_index, accelerator.num_processes
    dataset = WindowDataset(manifest, model_config, config.tiers, num_frames=num_frames)
    return LoopSetup(start_step, accelerator, accelerator.device, rank, world, dataset,
                     WindowSampler(len(dataset), config.seed))  # fmt: skip


def attach_latent_cache(setup: LoopSetup, config: TrainConfig, model, quiet: bool) -> None:
    """With ``config.latent_cache``: open (or start) the cache for this manifest and ``model``'s codec
    and audio encoder, encode the clips it lacks (each process its share, on its device) and let the
    dataset read its windows from it. ``model``: the `FadaModel` whose VAE encodes (the teacher's in
    distillation)."""
    if config.latent_cache is None:
        return
    from pipelines.latent_cache import cache_key, fill_cache, open_cache

    dataset, accelerator = setup.dataset, setup.accelerator
    key = cache_key(dataset.manifest, dataset.config, model.vae)
    if accelerator.is_main_process:
        open_cache(config.latent_cache, key, create=True)
    accelerator.wait_for_everyone()
    cache = open_cache(config.latent_cache, key, create=False)
    fill_cache(cache, dataset, model.encode_images, setup.device, setup.rank, setup.world, quiet or setup.rank > 0)
    accelerator.wait_for_everyone()
    dataset.cache = cache


@dataclass(frozen=True)
class LoopResult:
    means: dict[str, float]  # the last step's means over micro-batches and processes (at least "loss")
    seconds: float  # wall time of this call's loop
    steps_done: int  # optimiser steps done by this call


def run_training_loop(
    setup: LoopSetup,
    config: TrainConfig,
    model: torch.nn.Module,
    state: TrainingState,
    logs: TrainLogs,
    elapsed: float,
    task_name: str,
    micro_loss: Callable[[dict, torch.Generator], tuple[torch.Tensor, dict]],
    write_log: Callable[[int, list[dict], dict, float, float], None],
    save: Callable[[int, float], None],
    summary_names: Sequence[str] = ("loss",),
    quiet: bool = False,
) -> LoopResult:
    """The optimiser steps from ``setup.start_step`` + 1 to ``config.steps``, shared by every stage.

    Per step, for each of ``grad_accum`` micro-batches: this process's B windows (`window_batches`,
    DataLoader workers), a generator seeded by (seed, step, micro, process), ``micro_loss(batch,
    generator)`` → (loss, record of per-sample tensors) under autocast, backward (gradients synced
    on the last micro-batch only); then `optimizer_step`. ``summary_names``: record entries (and
    ``loss``) averaged over micro-batches and processes every step. Every ``log_every`` steps
    ``write_log(step, records, means, lr, seconds)`` (a collective in multi-process runs: every
    process calls it); every ``checkpoint_every`` steps and at the end ``save(step, seconds)``.
    ``seconds`` counts the training time of earlier runs (``elapsed``) too.
    """
    accelerator, device, rank, world = setup.accelerator, setup.device, setup.rank, setup.world
    workers = config.num_workers if config.num_workers is not None else default_num_workers(device)
    batches = window_batches(setup.dataset, state.sampler, config.batch_size, rank, world, workers,
                             pin_memory=device.type == "cuda")  # fmt: skip
    means, began = {name: float("nan") for name in summary_names}, time.perf_counter()
    with make_progress(quiet or rank > 0) as progress:
        task = progress.add_task(task_name, total=config.steps, completed=setup.start_step)
        for step in range(setup.start_step + 1, config.steps + 1):
            records = []
            for micro in range(config.grad_accum):
                state.sampler.take(config.batch_size * world)  # the stream position a checkpoint saves
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                generator = torch.Generator().manual_seed(step_seed(config.seed, step, micro, rank))
                syncing = micro == config.grad_accum - 1
                with contextlib.nullcontext() if syncing else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss, record = micro_loss(batch, generator)
                    accelerator.backward(loss / config.grad_accum)
                records.append({"micro": micro, "loss": loss.detach().float(), **record})
            lr = optimizer_step(accelerator, state, config)
            means = {
                name: float(accelerator.reduce(torch.stack([r[name].float().mean() for r in records]).mean(), "mean"))
                for name in summary_names
            }
            seconds = elapsed + time.perf_counter() - began
            if step % config.log_every == 0 or step == config.steps:
                write_log(step, records, means, lr, seconds)
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(step, seconds)
            progress.update(task, advance=1, description=f"{task_name} · loss {means['loss']:.4f}")
    batches.close()  # stops the DataLoader workers
    logs.close()
    return LoopResult(means, time.perf_counter() - began, config.steps - setup.start_step)
