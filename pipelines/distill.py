"""PeRFlow distillation of a teacher into a few-step student (FADA, docs/DESIGN.md §4, Eqs. 2-10).

`DistillStage` is what `training.fit` needs to distil; the loop is the one every stage runs. One
micro-batch (`distill_loss`): B clip windows (tier B, which holds tier A), encoded by the teacher's
VAE (or read from the latent cache), and per sample
t ∈ {1, 0.999, …, 0.001}, ε ~ N(0, I) and — in fast mode — CFG scales (cfg_a, cfg_r) from the
configured ranges. With k = window_of(t):

1. z_s = √a_s·z_0 + √(1−a_s)·ε at the window start t_k (ᾱ index `boundary_index`);
2. the frozen teacher solves the window with n DDIM steps (`schedulers.solve_window`, Eq. 2):
   fast mode with multi-CFG at the sample's scales (Eq. 9, 3 branches per solver step), balanced
   mode without CFG on the same condition-dropped inputs as the student (DESIGN §3 dropout);
3. distillation pair: student input ẑ_t on the window's line (corrected Eq. 3) at network
   timestep 1000·t, target ε̂ = (ẑ_e − λ_k·z_s)/η_k (Eq. 4);
   ground-truth pair (Eq. 6): the same with the true endpoint z_e* (same ε), target exactly ε;
   in fast mode the student sees Emb_cfg at the sample's scales (Eq. 10), the GT term at (1, 1);
4. R_i = L_gt,i / L_distill,i (detached), W_i per ``gt_weight`` (Eqs. 7-8),
   L = mean_i(L_distill,i + W_i·L_gt,i).

All of the math comes from `pipelines.fada_math` and `pipelines.schedulers`. The student starts as
the teacher plus a zero-initialised CFG conditioning (`build_student_from_teacher`). Checkpoint:
stage ``student``, mode ``fast`` | ``balanced``, with the teacher's hash.
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
from pipelines.checkpoint import CheckpointInfo, checkpoint_hash, load_checkpoint_info
from pipelines.data import batch_latents
from pipelines.errors import UsageError
from pipelines.model import FadaModel
from pipelines.model_config import CFG_CONDITIONINGS, ModelConfig
from pipelines.schedulers import add_noise, eps_alphas_cumprod, solve_window
from pipelines.training import (
    LOG_FILE,
    Resolved,
    Run,
    Stage,
    TrainConfig,
    TrainLogs,
    latent_dtype,
    motion_weights,
    sample_condition_dropout,
)

STAGE = "student"
MODES = ("fast", "balanced")
SAMPLES_FILE = "supervision.csv"
SAMPLE_COLUMNS = ("step", "micro", "sample", "t", "window", "cfg_audio", "cfg_ref")
SAMPLE_COLUMNS += ("loss_distill", "loss_gt", "ratio", "weight")
HISTOGRAM_FILE = "ratio_histogram.png"
_W_DEFAULTS = inspect.signature(fada_math.adaptive_weight).parameters  # Rp, Rd of Eq. 8 for the plot

# `mixed_precision` bf16|fp16: the frozen teacher is held in that dtype (it only runs forward, under
# autocast in the same precision anyway); the trained student keeps fp32 master weights
TEACHER_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def expand_tiers(tiers: tuple[str, ...]) -> tuple[str, ...]:
    """Tier B holds tier A (DESIGN §2: tier A ⊂ tier B), so ``B`` selects the clips tiered A or B."""
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
        object.__setattr__(self, "tiers", expand_tiers(self.tiers))
        if self.mode not in MODES:
            raise UsageError(f"`mode` {self.mode!r} is not valid; use fast (6 NFE) or balanced (18 NFE).")
        if self.cfg_conditioning is None:
            object.__setattr__(self, "cfg_conditioning", "tokens" if self.mode == "fast" else "none")
        if self.cfg_conditioning not in CFG_CONDITIONINGS:
            raise UsageError(
                f"`cfg_conditioning` {self.cfg_conditioning!r} is not valid; use {', '.join(CFG_CONDITIONINGS)}."
            )
        if self.mode == "balanced" and self.cfg_conditioning != "none":
            raise UsageError(
                f"`cfg_conditioning` {self.cfg_conditioning} needs `mode` fast; balanced students keep the 3 CFG "
                "branches at inference and take no CFG conditioning (drop the option or use `mode` fast)."
            )
        if not isinstance(self.windows, int) or self.windows < 1:
            raise UsageError(f"`windows` {self.windows!r} is not valid; use a whole number >= 1 (4 in the paper).")
        fada_math.window_solver_indices(1, self.solver_steps, self.windows)  # UsageError unless n divides a window
        fada_math.parse_gt_weight(self.gt_weight)
        for name, (low, high) in (("cfg_audio_range", self.cfg_audio_range), ("cfg_ref_range", self.cfg_ref_range)):
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise UsageError(f"`{name}` {low},{high} is not valid; give LOW,HIGH with 0 <= LOW <= HIGH, e.g. 1,10.")


class DistillStage(Stage):
    """A fast or balanced student (`DistillConfig.mode`) distilled from a frozen teacher."""

    name = STAGE
    config_class = DistillConfig
    logs = {LOG_FILE: ("step", "loss", "loss_distill", "loss_gt", "ratio_mean", "weight_mean", "lr", "seconds"),
            SAMPLES_FILE: SAMPLE_COLUMNS}  # fmt: skip
    keep = (HISTOGRAM_FILE,)
    summary_names = ("loss", "loss_distill", "loss_gt", "ratio", "weight")
    tensorboard_prefix = "distill"

    def __init__(self, teacher: str | Path | None = None):
        self.teacher_path = None if teacher is None else Path(teacher)  # None on resume: the recorded teacher

    def begin(self, resumed: CheckpointInfo | None) -> None:
        if self.teacher_path is None:
            if resumed is None:
                raise UsageError("`teacher` is missing; pass the checkpoint folder written by `fada train-teacher`.")
            self.teacher_path = Path(resumed.config["teacher"]["path"])
        self.teacher_info = load_checkpoint_info(self.teacher_path, expect_stage="teacher")
        if self.teacher_info.image_only:
            raise UsageError(
                f"teacher {self.teacher_path} has only been through the image stage (no audio path or temporal "
                "layers trained); run `fada train-teacher --stage video --init-from` it first."
            )
        self.teacher_hash = checkpoint_hash(self.teacher_path)
        if resumed is not None and resumed.teacher_hash != self.teacher_hash:
            raise UsageError(
                f"`resume`: `teacher` {self.teacher_path} is not the teacher {resumed.path} was distilled from; "
                "pass that teacher."
            )

    def base_model_config(self, preset: str | None) -> ModelConfig:
        return ModelConfig.from_dict(self.teacher_info.config["model"])  # the student is the teacher's shape

    def model_config(self, model_config: ModelConfig, config: DistillConfig) -> ModelConfig:
        return dataclasses.replace(model_config, cfg_conditioning=config.cfg_conditioning)

    def check(self, resolved: Resolved) -> None:
        if resolved.model_config.family == "hallo" and resolved.config.latent_cache is not None:
            raise UsageError(_HALLO_NEEDS_PIXELS)  # before anything is written (`family_inputs` reads the pixels)

    def build_model(self, run: Run) -> FadaModel:
        """The frozen teacher on the device; the student: the teacher + zero-initialised CFG conditioning
        (or the saved student on resume). Then the teacher in the autocast dtype, at half the memory."""
        self.config = run.config
        # the schedule ε lives on: SD1.5's, or a zero-SNR model's with ᾱ floored (schedulers.ALPHA_BAR_FLOOR,
        # docs/DESIGN.md §4)
        self.alphas_cumprod = eps_alphas_cumprod(run.model_config, torch.float32).to(run.device)
        self.teacher = FadaModel.from_checkpoint(self.teacher_path, expect_stage="teacher").to(run.device)
        self.teacher.eval().requires_grad_(False)
        student = super().build_model(run)
        if run.config.mixed_precision != "no":  # after the student copied it in fp32
            self.teacher.to(dtype=TEACHER_DTYPES[run.config.mixed_precision])
        return student

    def new_model(self, run: Run) -> FadaModel:
        torch.manual_seed(run.config.seed)
        return build_student_from_teacher(self.teacher, run.config.cfg_conditioning, run.model_config.cfg_tokens)

    def may_skip_parameters(self, config: DistillConfig) -> bool:
        return config.mode == "balanced" and super().may_skip_parameters(config)  # fast mode drops nothing

    def encoder(self, model) -> FadaModel:
        return self.teacher  # the teacher's VAE: the latents the teacher trained on

    def loss(self, model, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return distill_loss(model, self.teacher, batch, self.alphas_cumprod, generator, self.config)

    def task_name(self, config: DistillConfig) -> str:
        return f"distilling {config.mode} student"

    def write_log(self, run: Run, logs: TrainLogs, step: int, records: list[dict], means: dict, lr: float,
                  seconds: float) -> None:  # fmt: skip
        """The step row, every sample's R and W (all processes': a collective), TensorBoard histograms."""
        super().write_log(run, logs, step, records, means, lr, seconds)
        if run.world > 1:
            gather = run.accelerator.gather
            records = [{k: gather(v) if torch.is_tensor(v) else v for k, v in r.items()} for r in records]
        samples = []
        for record in records:
            columns = [record[name].detach().double().cpu().tolist() for name in SAMPLE_COLUMNS[3:]]
            for i, values in enumerate(zip(*columns, strict=True)):
                t, window, *rest = values
                samples.append([step, record["micro"], i, repr(t), int(window), *map(repr, rest)])
        logs.write_rows(SAMPLES_FILE, samples)
        logs.histogram(step, "distill/ratio", torch.cat([r["ratio"] for r in records]))
        logs.histogram(step, "distill/weight", torch.cat([r["weight"] for r in records]))

    def mode(self, config: DistillConfig) -> str:
        return config.mode

    def record(self, run: Run, step: int) -> dict:
        teacher = {"path": str(self.teacher_path), "hash": self.teacher_hash, "step": self.teacher_info.step}
        return {
            "config": {"teacher": teacher},
            "teacher_hash": self.teacher_hash,
            "extra": {"supervision_log": SAMPLES_FILE, "ratio_histogram": HISTOGRAM_FILE},
            "summary": {"teacher": str(self.teacher_path), "teacher_hash": self.teacher_hash},
        }

    def saved(self, run: Run) -> None:
        plot_ratio_histogram(run.out / SAMPLES_FILE, run.out / HISTOGRAM_FILE, run.config.gt_weight)


def build_student_from_teacher(teacher: FadaModel, cfg_conditioning: str, cfg_tokens: int = 4) -> FadaModel:
    """A student with the teacher's weights plus a zero-initialised CFG conditioning (equal outputs at start)."""
    config = dataclasses.replace(teacher.config, cfg_conditioning=cfg_conditioning, cfg_tokens=cfg_tokens)
    student = FadaModel.from_config(config).to(device=teacher.device, dtype=teacher.dtype)
    result = student.load_state_dict(teacher.state_dict(), strict=False)
    own = [k for k in result.missing_keys if not k.startswith("cfg_conditioning.")]
    if own or result.unexpected_keys:
        raise ValueError(f"teacher/student mismatch: missing {own[:3]}, unexpected {result.unexpected_keys[:3]}")
    return student


def distill_loss(student, teacher: FadaModel, batch: dict, alphas_cumprod, generator, config: DistillConfig):
    """L_total of one micro-batch (Eqs. 2-8, DESIGN §4) and its per-sample record (t, k, scales, losses, R, W)."""
    unwrapped = getattr(student, "module", student)
    K, fast = config.windows, config.mode == "fast"
    # (B, F, C, h, w), (B, C, h, w), (B, M, C, h, w): from the latent cache, or encoded by the teacher's VAE
    z0, reference_latent, motion_latents = batch_latents(teacher.encode_images, batch,
                                                         dtype=latent_dtype(teacher, config))  # fmt: skip
    z0 = z0.float()
    b, device = z0.shape[0], z0.device

    # 1. per sample: t, its window k, ε, CFG scales (fast) and condition dropout (balanced)
    t = torch.randint(1, 1001, (b,), generator=generator).double() / 1000  # (B,) in {0.001, …, 1}
    eps = torch.randn(z0.shape, generator=generator, dtype=torch.float32)  # (B, F, C, h, w)
    cfg_a = _uniform(config.cfg_audio_range, b, generator)  # (B,)
    cfg_r = _uniform(config.cfg_ref_range, b, generator)  # (B,)
    # the drop flags stay on the host (B,) bool: the models decide from them without a device sync
    if fast:  # the teacher's guided output already contains the null branches
        drop_audio = drop_reference = torch.zeros(b, dtype=torch.bool)
    else:
        drop_audio, drop_reference = sample_condition_dropout(b, config.p_drop_audio, config.p_drop_both, generator)
    # drawn on the CPU in float64 (the same numbers on every device); on the device in its exact
    # dtype for time arithmetic: MPS has no float64, and moving a float64 tensor there raises. Copied
    # without waiting for the device.
    exact = fada_math.exact_dtype(device)
    t, cfg_a, cfg_r = (x.to(device, exact, non_blocking=True) for x in (t, cfg_a, cfg_r))
    eps = eps.to(device, non_blocking=True)
    k = fada_math.window_of(t, K)  # (B,) long

    # 2. window start z_s and true end z_e* (same ε) at the boundary noise levels
    z_start = add_noise(z0, eps, fada_math.boundary_index(k / K), alphas_cumprod)
    z_end_true = add_noise(z0, eps, fada_math.boundary_index((k - 1) / K), alphas_cumprod)

    # 3. the frozen teacher solves the window (Eq. 2): multi-CFG (fast) or the dropped conditions (balanced)
    face = family_inputs(teacher, batch)  # hallo family: the references' face inputs (None for fada's own)
    with torch.no_grad():
        tokens = teacher.audio_tokens(batch["audio_features"])  # (B, F, N, D)
        # drop_reference is on the host: deciding costs no device sync
        reference = teacher.condition_reference(reference_latent, motion_latents, drop_reference, face)

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

    # 5. adaptive mixed supervision (Eqs. 5, 7, 8), per sample; both terms weighed alike by what moves
    pixel_weights = motion_weights(z0, config.motion_loss_weight) if config.motion_loss_weight else 1.0
    loss_distill = ((pred_distill - target_distill).pow(2) * pixel_weights).flatten(1).mean(1)  # (B,)
    loss_gt = ((pred_gt - eps).pow(2) * pixel_weights).flatten(1).mean(1)  # (B,)
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


_HALLO_NEEDS_PIXELS = (
    "distilling a hallo-family teacher needs the reference frames' pixels (its face inputs); leave `latent_cache` off."
)


def family_inputs(model: FadaModel, batch: dict):
    """The hallo family's face inputs of a batch's references (`pipelines.hallo_inputs`), on the model's device."""
    if model.hallo is None:
        return None
    if "reference" not in batch:
        raise UsageError(_HALLO_NEEDS_PIXELS)
    from pipelines.hallo_inputs import face_conditions, images_to_uint8

    return face_conditions(images_to_uint8(batch["reference"]), model.config).to(model.device, model.dtype)


def _uniform(bounds: tuple[float, float], b: int, generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)  # (B,)


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
    ax.set_title(f"mixed supervision ratio, {len(ratios)} samples, gt_weight {gt_weight}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
