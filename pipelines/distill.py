"""PeRFlow distillation of a teacher into a few-step student (FADA, SPEC §4, Eqs. 2-10).

One optimiser step: for each of ``grad_accum`` micro-batches, draw B clip windows (tier B, which
holds tier A), encode them (or read their cached latents), and per sample draw
t ∈ {1, 0.999, …, 0.001}, ε ~ N(0, I) and — in fast mode — CFG scales (cfg_a, cfg_r) from the
configured ranges. With k = window_of(t):

1. z_s = √a_s·z_0 + √(1−a_s)·ε at the window start t_k (ᾱ index `boundary_index`);
2. the frozen teacher solves the window with n DDIM steps (`schedulers.solve_window`, Eq. 2):
   fast mode with multi-CFG at the sample's scales (Eq. 9, 3 branches per solver step), balanced
   mode without CFG on the same condition-dropped inputs as the student (SPEC §3 dropout);
3. distillation pair: student input ẑ_t on the window's line (corrected Eq. 3) at network
   timestep 1000·t, target ε̂ = (ẑ_e − λ_k·z_s)/η_k (Eq. 4);
   ground-truth pair (Eq. 6): the same with the true endpoint z_e* (same ε), target exactly ε;
   in fast mode the student sees Emb_cfg at the sample's scales (Eq. 10), the GT term at (1, 1);
4. R_i = L_gt,i / L_distill,i (detached), W_i per ``--gt-weight`` (Eqs. 7-8),
   L = mean_i(L_distill,i + W_i·L_gt,i).

All of the math comes from `pipelines.fada_math` and `pipelines.schedulers`. The loop and its
machinery (accelerate, exact resume, EMA, CSV + TensorBoard logs; `training.run_training_loop`)
are `pipelines.training`, shared with the teacher. Checkpoint: stage ``student``, mode ``fast`` |
``balanced``, with the teacher's hash.
Logs in OUT: ``train_log.csv`` (per step), ``supervision.csv`` (per sample: t, k, scales, both
losses, R, W), TensorBoard under ``tb/`` and ``ratio_histogram.png`` (R with the Rp and Rd lines).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines import fada_math
from pipelines.checkpoint import checkpoint_hash, load_checkpoint_info
from pipelines.data import batch_latents
from pipelines.errors import UsageError
from pipelines.manifest import manifest_hash
from pipelines.model import FadaModel, build_student_from_teacher, sample_condition_dropout
from pipelines.model_config import CFG_CONDITIONINGS, ModelConfig
from pipelines.progress import log
from pipelines.schedulers import add_noise, eps_alphas_cumprod, solve_window
from pipelines.training import (
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
)

STAGE = "student"
MODES = ("fast", "balanced")
LOG_FILE = "train_log.csv"
LOG_COLUMNS = ("step", "loss", "loss_distill", "loss_gt", "ratio_mean", "weight_mean", "lr", "seconds")
SAMPLES_FILE = "supervision.csv"
SAMPLE_COLUMNS = ("step", "micro", "sample", "t", "window", "cfg_audio", "cfg_ref")
SAMPLE_COLUMNS += ("loss_distill", "loss_gt", "ratio", "weight")
HISTOGRAM_FILE = "ratio_histogram.png"
SUMMARY_NAMES = ("loss", "loss_distill", "loss_gt", "ratio", "weight")  # step means: log row, progress, result
_W_DEFAULTS = inspect.signature(fada_math.adaptive_weight).parameters  # Rp, Rd of Eq. 8 for the plot

# --mixed-precision bf16|fp16: the frozen teacher is held in that dtype (it only runs forward, under
# autocast in the same precision anyway); the trained student keeps fp32 master weights
TEACHER_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def expand_tiers(tiers: tuple[str, ...]) -> tuple[str, ...]:
    """Tier B holds tier A (SPEC §2: tier A ⊂ tier B), so ``B`` selects the clips tiered A or B."""
    return tuple(sorted(set(tiers) | {"A"})) if "B" in tiers else tuple(tiers)


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    tiers: tuple[str, ...] = ("A", "B")  # manifest tiers to distil on (tier B, which holds tier A)
    lr: float = 1e-5  # AdamW learning rate (the student starts at the teacher: small steps)
    mode: str = "fast"  # fast: CFG inside distillation, 1 forward per step | balanced: 3 CFG branches
    windows: int = 4  # K, PeRFlow time windows
    solver_steps: int = 10  # n, teacher DDIM steps per window; 1000/(K·n) must be an integer
    gt_weight: str = "adaptive"  # W of Eq. 7: adaptive (Eq. 8) | adaptive-unlimited | fixed-X
    cfg_conditioning: str | None = None  # tokens|layer|time-embed|none; None = tokens (fast) / none (balanced)
    cfg_audio_range: tuple[float, float] = (1.0, 10.0)  # fast mode: cfg_a ~ U(range) per sample
    cfg_ref_range: tuple[float, float] = (1.0, 3.0)  # fast mode: cfg_r ~ U(range) per sample

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r} is not valid; use fast (6 NFE) or balanced (18 NFE).")
        if self.cfg_conditioning is None:
            object.__setattr__(self, "cfg_conditioning", "tokens" if self.mode == "fast" else "none")
        if self.cfg_conditioning not in CFG_CONDITIONINGS:
            raise UsageError(
                f"--cfg-conditioning {self.cfg_conditioning!r} is not valid; use {', '.join(CFG_CONDITIONINGS)}."
            )
        if self.mode == "balanced" and self.cfg_conditioning != "none":
            raise UsageError(
                f"--cfg-conditioning {self.cfg_conditioning} needs --mode fast; balanced students keep the 3 CFG "
                "branches at inference and take no CFG conditioning (drop the option or use --mode fast)."
            )
        if not isinstance(self.windows, int) or self.windows < 1:
            raise UsageError(f"--windows {self.windows!r} is not valid; use a whole number >= 1 (4 in the paper).")
        fada_math.window_solver_indices(1, self.solver_steps, self.windows)  # UsageError unless n divides a window
        fada_math.parse_gt_weight(self.gt_weight)
        for name, (low, high) in (("--cfg-audio-range", self.cfg_audio_range), ("--cfg-ref-range", self.cfg_ref_range)):
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise UsageError(f"{name} {low},{high} is not valid; give LOW,HIGH with 0 <= LOW <= HIGH, e.g. 1,10.")


@dataclass(frozen=True)
class DistillResult:
    checkpoint: Path  # the student checkpoint folder
    mode: str  # fast | balanced
    steps: int  # optimiser steps done in total
    steps_this_run: int  # steps done by this call (fewer than `steps` after --resume)
    final_loss: float  # L_total of the last step
    final_loss_distill: float  # mean L_distill of the last step
    final_loss_gt: float  # mean L_gt of the last step
    seconds: float  # wall time of this call's loop
    steps_per_s: float  # steps_this_run / seconds
    processes: int  # accelerate processes
    dataset_clips: int  # clips distilled on
    teacher: str  # the teacher checkpoint
    teacher_hash: str  # its checkpoint_hash, recorded in the student
    is_main_process: bool  # False on the other processes of a multi-process run


def distill(
    teacher_path: str | Path,
    manifest: str | Path,
    out: str | Path,
    config: DistillConfig,
    device: torch.device,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> DistillResult:
    """Distil (or resume distilling) the teacher at ``teacher_path`` into a student at ``out``."""
    teacher_path, manifest, out = Path(teacher_path), Path(manifest), Path(out)
    # 1. check the teacher, the output folder and, on --resume, the student in it
    teacher_info = load_checkpoint_info(teacher_path, expect_stage="teacher")
    if teacher_info.image_only:
        raise UsageError(
            f"teacher {teacher_path} has only been through the image stage (no audio path or temporal layers "
            "trained); run `fada train-teacher --stage video --init-from` it first."
        )
    teacher_hash = checkpoint_hash(teacher_path)
    student_config = dataclasses.replace(
        ModelConfig.from_dict(teacher_info.config["model"]), cfg_conditioning=config.cfg_conditioning
    )
    info = check_out(out, resume, overwrite, STAGE)
    if info is not None:
        if info.teacher_hash != teacher_hash:
            raise UsageError(
                f"--resume: --teacher {teacher_path} is not the teacher {out} was distilled from; pass that teacher."
            )
        student_config, config = resumed_configs(info, student_config, config, manifest)

    # 2.-3. accelerate (one process, or `accelerate launch` for several); the clips of the
    # distillation tiers, windows drawn by a resumable stream of keys
    setup = set_up_loop(out, info, manifest, student_config, config, device, quiet)
    accelerator, device = setup.accelerator, setup.device

    # 4. frozen teacher; student = teacher + zero-initialised CFG conditioning (or the saved student)
    teacher = FadaModel.from_checkpoint(teacher_path, expect_stage="teacher").to(device)
    teacher.eval().requires_grad_(False)
    if info is not None:
        student = FadaModel.from_checkpoint(out, expect_stage=STAGE).to(device)
    else:
        torch.manual_seed(config.seed)
        student = build_student_from_teacher(teacher, config.cfg_conditioning, student_config.cfg_tokens)
    if config.mixed_precision != "no":  # after the student copied it in fp32: the frozen teacher at half the memory
        teacher.to(dtype=TEACHER_DTYPES[config.mixed_precision])
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()  # the teacher runs under no_grad: nothing to recompute
    params = {name: p for name, p in student.named_parameters() if p.requires_grad}
    optimizer, lr_scheduler = make_optimizer(params, config)
    ema = make_ema(params, config.ema)
    state = TrainingState(params, optimizer, lr_scheduler, ema, setup.sampler)
    elapsed = restore_training_state(out, state) if info is not None else 0.0
    attach_latent_cache(setup, config, teacher, quiet)  # the teacher's VAE: the latents the teacher trained on
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
    state.optimizer, state.lr_scheduler = optimizer, lr_scheduler  # save through the prepared wrappers
    # the schedule ε lives on: SD1.5's, or a zero-SNR model's with ᾱ floored
    # (schedulers.ALPHA_BAR_FLOOR, docs/DESIGN.md §4)
    alphas_cumprod = eps_alphas_cumprod(student_config, torch.float32).to(device)
    mhash = manifest_hash(manifest)
    config_record = {
        "model": student_config.to_dict(),
        "train": config.to_dict(),
        "teacher": {"path": str(teacher_path), "hash": teacher_hash, "step": teacher_info.step},
    }

    # 5. the loop (`training.run_training_loop`); distillation's own: its loss, per-sample log, R histogram
    tables = {LOG_FILE: LOG_COLUMNS, SAMPLES_FILE: SAMPLE_COLUMNS}
    logs = TrainLogs(out, setup.start_step, accelerator.is_main_process, tables, keep=(HISTOGRAM_FILE,))

    def micro_loss(batch, generator):
        return distill_loss(student, teacher, batch, alphas_cumprod, generator, config)

    def write_log(step, records, means, lr, seconds):
        if setup.world > 1:  # every process's samples reach the per-sample log (a collective: all ranks call it)
            records = [{k: accelerator.gather(v) if torch.is_tensor(v) else v for k, v in r.items()} for r in records]
        _write_logs(logs, step, records, means, lr, seconds)

    def save(step, seconds):
        save_training_checkpoint(
            accelerator,
            out,
            logs,
            state,
            accelerator.unwrap_model(student),
            seconds,
            stage=STAGE,
            mode=config.mode,
            config=config_record,
            step=step,
            manifest_hash=mhash,
            teacher_hash=teacher_hash,
            extra={"supervision_log": SAMPLES_FILE, "ratio_histogram": HISTOGRAM_FILE},
        )
        if accelerator.is_main_process:
            plot_ratio_histogram(out / SAMPLES_FILE, out / HISTOGRAM_FILE, config.gt_weight)

    done = run_training_loop(setup, config, student, state, logs, elapsed, f"distilling {config.mode} student",
                             micro_loss, write_log, save, SUMMARY_NAMES, quiet)  # fmt: skip
    if accelerator.is_main_process:
        rate = f"{done.steps_done / done.seconds:.2f} steps/s"
        log(f"distilled {done.steps_done} steps in {done.seconds:.1f} s ({rate}); student {out}", quiet=quiet)
    return DistillResult(
        checkpoint=out,
        mode=config.mode,
        steps=config.steps,
        steps_this_run=done.steps_done,
        final_loss=done.means["loss"],
        final_loss_distill=done.means["loss_distill"],
        final_loss_gt=done.means["loss_gt"],
        seconds=done.seconds,
        steps_per_s=done.steps_done / done.seconds if done.seconds > 0 else float("inf"),
        processes=setup.world,
        dataset_clips=len(setup.dataset),
        teacher=str(teacher_path),
        teacher_hash=teacher_hash,
        is_main_process=accelerator.is_main_process,
    )


def distill_loss(student, teacher: FadaModel, batch: dict, alphas_cumprod, generator, config: DistillConfig):
    """L_total of one micro-batch (Eqs. 2-8, SPEC §4) and its per-sample record (t, k, scales, losses, R, W)."""
    unwrapped = getattr(student, "module", student)
    K, fast = config.windows, config.mode == "fast"
    # (B, F, C, h, w), (B, C, h, w), (B, M, C, h, w): from the latent cache, or encoded by the teacher's VAE
    z0, reference_latent, motion_latents = batch_latents(teacher.encode_images, batch)
    z0 = z0.float()
    b, device = z0.shape[0], z0.device

    # 1. per sample: t, its window k, ε, CFG scales (fast) and condition dropout (balanced)
    t = torch.randint(1, 1001, (b,), generator=generator).double() / 1000  # (B,) in {0.001, …, 1}
    eps = torch.randn(z0.shape, generator=generator, dtype=torch.float32)  # (B, F, C, h, w)
    cfg_a = _uniform(config.cfg_audio_range, b, generator)  # (B,)
    cfg_r = _uniform(config.cfg_ref_range, b, generator)  # (B,)
    if fast:  # the teacher's guided output already contains the null branches
        drop_audio = drop_reference = torch.zeros(b, dtype=torch.bool)
    else:
        drop_audio, drop_reference = sample_condition_dropout(b, *_dropout(unwrapped.config), generator=generator)
    # drawn on the CPU in float64 (the same numbers on every device); on the device in its exact
    # dtype for time arithmetic: MPS has no float64, and moving a float64 tensor there raises
    exact = fada_math.exact_dtype(device)
    t, cfg_a, cfg_r = t.to(device, exact), cfg_a.to(device, exact), cfg_r.to(device, exact)
    eps = eps.to(device)
    drop_audio, drop_reference = drop_audio.to(device), drop_reference.to(device)
    k = fada_math.window_of(t, K)  # (B,) long

    # 2. window start z_s and true end z_e* (same ε) at the boundary noise levels
    z_start = add_noise(z0, eps, fada_math.boundary_index(k / K), alphas_cumprod)
    z_end_true = add_noise(z0, eps, fada_math.boundary_index((k - 1) / K), alphas_cumprod)

    # 3. the frozen teacher solves the window (Eq. 2): multi-CFG (fast) or the dropped conditions (balanced)
    face = family_inputs(teacher, batch)  # hallo family: the references' face inputs (None for fada's own)
    with torch.no_grad():
        tokens = teacher.audio_tokens(batch["audio_features"])  # (B, F, N, D)
        skip = bool(drop_reference.all()) and face is None
        reference = None if skip else teacher.reference_features(reference_latent, motion_latents, face)

        def teacher_eps(z, index):
            if fast:
                branches = teacher.denoise_multi_cfg(z, index.float(), tokens, reference)  # 3 branches, one forward
                return fada_math.multi_cfg(*(e.float() for e in branches), cfg_a, cfg_r)
            return teacher.denoise(z, index.float(), tokens, reference, drop_audio, drop_reference).float()

        z_end = solve_window(teacher_eps, z_start, k, config.solver_steps, alphas_cumprod, K)

    # 4. distillation pair (Eqs. 3-4) and ground-truth pair (Eq. 6), one student forward of 2B
    x_distill = fada_math.perflow_student_input(z_start, z_end, t, k, K)
    target_distill = fada_math.perflow_eps_target(z_start, z_end, alphas_cumprod, k, K)
    x_gt = fada_math.perflow_student_input(z_start, z_end_true, t, k, K)  # its target is exactly ε
    scales = None
    if unwrapped.cfg_conditioning is not None:
        ones = torch.ones_like(cfg_a)
        scales = (torch.cat([cfg_a, ones]), torch.cat([cfg_r, ones]))  # GT term at (1, 1)
    pred = student(
        torch.cat([x_distill, x_gt]),
        (1000 * t).float().repeat(2),  # network timestep 1000·t
        reference_latent,
        motion_latents,
        batch["audio_features"],
        drop_audio.repeat(2),
        drop_reference.repeat(2),
        scales,
        **({} if face is None else {"face": face}),
    )
    pred_distill, pred_gt = pred.float().chunk(2)

    # 5. adaptive mixed supervision (Eqs. 5, 7, 8), per sample
    loss_distill = (pred_distill - target_distill).pow(2).flatten(1).mean(1)  # (B,)
    loss_gt = (pred_gt - eps).pow(2).flatten(1).mean(1)  # (B,)
    ratio = (loss_gt / loss_distill.clamp_min(torch.finfo(torch.float32).tiny)).detach()  # R_i
    weight = fada_math.supervision_weight(ratio, config.gt_weight)  # W_i, no gradient
    loss = (loss_distill + weight * loss_gt).mean()
    record = {
        "t": t,
        "window": k,
        "cfg_audio": cfg_a if fast else torch.full_like(cfg_a, math.nan),  # balanced: no CFG in training
        "cfg_ref": cfg_r if fast else torch.full_like(cfg_r, math.nan),
        "loss_distill": loss_distill.detach(),
        "loss_gt": loss_gt.detach(),
        "ratio": ratio,
        "weight": weight.detach(),
    }
    return loss, record


def family_inputs(model: FadaModel, batch: dict):
    """The hallo family's face inputs of a batch's references (`pipelines.hallo_inputs`), on the model's device."""
    if model.hallo is None:
        return None
    if "reference" not in batch:
        raise UsageError("distilling a hallo-family teacher needs the reference frames' pixels; drop --cache-latents.")
    from pipelines.hallo_inputs import face_conditions, images_to_uint8

    return face_conditions(images_to_uint8(batch["reference"]), model.config).to(model.device, model.dtype)


def _uniform(bounds: tuple[float, float], b: int, generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)  # (B,)


def _dropout(config: ModelConfig) -> tuple[float, float]:
    return config.p_drop_audio, config.p_drop_both


def _write_logs(logs: TrainLogs, step: int, records: list[dict], means: dict, lr: float, seconds: float) -> None:
    row = [step, repr(means["loss"]), repr(means["loss_distill"]), repr(means["loss_gt"])]
    logs.write_rows(LOG_FILE, [[*row, repr(means["ratio"]), repr(means["weight"]), repr(lr), f"{seconds:.3f}"]])
    samples = []
    for record in records:
        columns = [record[name].detach().double().cpu().tolist() for name in SAMPLE_COLUMNS[3:]]
        for i, values in enumerate(zip(*columns, strict=True)):
            t, window, *rest = values
            samples.append([step, record["micro"], i, repr(t), int(window), *map(repr, rest)])
    logs.write_rows(SAMPLES_FILE, samples)
    logs.scalars(step, {f"distill/{name}": value for name, value in means.items()} | {"distill/lr": lr})
    logs.histogram(step, "distill/ratio", torch.cat([r["ratio"] for r in records]))
    logs.histogram(step, "distill/weight", torch.cat([r["weight"] for r in records]))


def plot_ratio_histogram(samples_csv: Path, out_png: Path, gt_weight: str) -> Path:
    """PNG histogram of the logged per-sample R = L_gt/L_distill (log x) with the Rp and Rd lines of Eq. 8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with samples_csv.open(newline="") as handle:
        ratios = np.array([float(row["ratio"]) for row in csv.DictReader(handle)])
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    r_peak, r_dead = _W_DEFAULTS["r_peak"].default, _W_DEFAULTS["r_dead"].default
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if len(ratios):
        low, high = min(ratios.min(), 1.0), max(ratios.max(), 2 * r_dead)
        ax.hist(ratios, bins=np.geomspace(low * 0.9, high * 1.1, 40), color="tab:blue", alpha=0.8)
    ax.axvline(r_peak, color="tab:orange", linestyle="--", label=f"Rp = {r_peak:g} (W peak)")
    ax.axvline(r_dead, color="tab:red", linestyle="--", label=f"Rd = {r_dead:g} (W = 0 beyond)")
    ax.set_xscale("log")
    ax.set_xlabel("R = L_gt / L_distill (per sample)")
    ax.set_ylabel("samples")
    ax.set_title(f"mixed supervision ratio, {len(ratios)} samples, --gt-weight {gt_weight}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
