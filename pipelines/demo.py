"""`fada demo`: the whole lifecycle on the embedded demo dataset, on CPU, within a time budget.

1. demo-data: synthetic talking portraits with known ground truth (`pipelines.demo_data`);
2. curate: score and tier them (`pipelines.curate`); the last identity is held out of training;
3. train-teacher on the tier-A clips of the other identities: one joint stage, or the paper's two
   (DESIGN §3b: the image stage, then the video stage started from it) when `DemoConfig.image_share`
   is above 0. A few probe steps time each stage, then each resumes up to the steps its share of the
   minutes left pays for. Whatever the probes say, the teacher keeps at least
   `DemoConfig.teacher_min_share` of the whole budget;
4. distill the trained teacher on the tier-A and B clips of the same identities into a fast (6 NFE)
   and a balanced (18 NFE) student, each the same way: probe steps, then resume up to the time left.
   With `DemoConfig.parallel` both run at once, one process and one thread each;
5. generate, per mode (teacher, balanced, fast), one video per held-out clip from the held-out
   identity's portrait and the clip's own speech, and one from the same speech reversed in time (the
   lip-sync control), in parallel processes like the students. On a slow machine the videos are
   shorter and the teacher samples fewer steps (`plan_generation`), so the teacher's training is not cut;
6. eval each mode against the held-out clips (`pipelines.evaluate`), plus the identity measure
   against the portrait and the mouth-vs-speech r of both videos (`pipelines.metrics`);
7. the summary: one table row per mode, a contact sheet PNG, ``demo_summary.json``.

Threads: every process runs one torch thread (`DemoConfig.threads`). Two threads ran a demo training
step no faster than one on this project's 2-vCPU machines (they spin against each other); the second
core is used by a second process instead (curate's worker pool, the students, the generation jobs).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from filters.base import ScoringSettings
from pipelines.cfg_sweep import HeldOutClip, generate_set, metric_values
from pipelines.checkpoint import save_checkpoint
from pipelines.curate import CurateConfig, run_curate
from pipelines.demo_data import DemoDataConfig, generate_demo_data
from pipelines.devices import resolve_device
from pipelines.distill import DistillStage
from pipelines.errors import UsageError
from pipelines.evaluate import EvalConfig, evaluate
from pipelines.faces import face_found_rate
from pipelines.generate import GenerateConfig
from pipelines.manifest import clip_path, write_manifest
from pipelines.media import read_video
from pipelines.model import FadaModel
from pipelines.model_config import get_preset
from pipelines.pipeline import FadaPipeline
from pipelines.progress import log
from pipelines.train_teacher import TeacherStage
from pipelines.training import FitResult, fit

MARKER = "fada_demo.json"  # written first into DIR: marks a folder a rerun may replace
SUMMARY = "demo_summary.json"
STUDENT_MODES = ("balanced", "fast")  # distilled after the teacher, in this order
MODES = ("teacher", *STUDENT_MODES)
TEACHER_SHARE = 0.7  # of the minutes left after the probes and the generate + eval reserve; the students split the rest
PRESETS = ("tiny", "demo")
# eval rows copied into each mode's summary row (the `fada demo` table's metric columns)
DEMO_METRICS = ("sync_proxy", "sync_proxy_offset", "e_fid_proxy", "iqa", "piqe", "sharpness", "psnr", "ssim",
                "identity_psnr16", "identity_colour_de")  # fmt: skip
TEACHER_STEP_LADDER = (25, 15, 10, 6)  # teacher DDIM steps tried, most first, until generation fits its share
# what generating and evaluating cost over what the probe predicts: measured 346 s against 302 s predicted
# with the demo pinned to one core, where the two generation processes share it (bench/results/demo_budget.md)
GENERATION_MARGIN = 1.2
SHORT_SECONDS = 2.0  # the shortest held-out speech generated on a slow machine
# the targets of a demo run (issue 19), for the teacher and the fast student; see `targets_met`
TARGETS = {"face_rate": 0.9, "identity_fraction": 0.75, "mouth_r": 0.5, "mouth_r_above_reversed": 0.3,
           "fast_r_within": 0.1}  # fmt: skip


@dataclass(frozen=True)
class DemoConfig:
    """One demo run; the data size follows the preset."""

    minutes: float = 15.0  # wall-clock budget of the whole run; training gets what the other stages leave
    preset: str = "demo"  # model preset: tiny (tests, seconds) or demo (CPU, minutes)
    seed: int = 0  # seeds the data, the training and the noise
    probe_steps: int = 3  # training steps timed before the budget is set
    min_steps: int = 5  # the teacher trains at least this many steps, whatever the budget
    max_steps: int = 5000  # and at most this many
    batch_size: int = 2  # clip windows per training step (video stage and students)
    # the teacher recipe, chosen by bench/teacher_recipe.py (bench/results/teacher_recipe.md)
    image_share: float = 0.0  # of the teacher's time, spent in the image stage; the video stage gets the rest
    # (0: one joint stage — audio, motion and the reference learnt together from the first step)
    image_batch_size: int = 8  # single frames per image-stage step
    teacher_lr: float = 3e-4  # AdamW learning rate of the teacher (1e-3 made the motion-weighted loss diverge)
    loss_weighting: str = "v"  # teacher loss weighting (`pipelines.train_teacher.loss_weights`)
    teacher_ema: float = 0.0  # EMA decay of the teacher's weights (0 = off)
    identity_augment: float = 0.0  # probability of `data.identity_transform` per teacher training window
    motion_loss_weight: float = 2.0  # α of the teacher's `training.motion_weights` (0: the plain loss)
    teacher_min_share: float = 0.5  # of the whole budget, the least the teacher trains, whatever the probes say
    student_min_share: float = 0.1  # of the whole budget, what generation leaves the students at least
    eval_clips: int = 1  # held-out clips generated and evaluated per mode
    eval_seconds: float = 3.0  # seconds of each held-out clip's speech generated (fewer on a slow machine)
    generate_steps: int | None = None  # teacher DDIM steps (None: 25 → NFE 75, fewer on a slow machine)
    # every mode's videos: audio 1.5 and no reference guidance; at the paper's 6.5 / 2.5 the residual teacher's
    # audio-driven changes are amplified into whole-face flicker (identity 0.43 of the way up instead of 0.84),
    # and at audio 2 one teacher scored identity 0.74 where at 1.5 it scored 0.81 (mouth r 0.94 both)
    cfg_audio: float | None = 1.5  # audio guidance scale of every mode's videos (None: generate's default)
    cfg_ref: float | None = 1.0  # reference guidance scale of every mode's videos (None: generate's default)
    distill_cfg_audio_range: tuple[float, float] = (1.0, 3.0)  # the fast student's training scales (cfg_a),
    distill_cfg_ref_range: tuple[float, float] = (1.0, 1.5)  # (cfg_r), drawn per sample around the ones used
    distill_lr: float = 1e-4  # AdamW learning rate of both students (short runs: larger than distill's default)
    distill_batch_size: int = 2  # clip windows per distillation step
    distill_probe_steps: int = 2  # distillation steps timed per student before its budget is set
    # the students' teacher DDIM steps per PeRFlow window (distill's default is 10) and α of their motion-weighted
    # loss (`training.motion_weights`, as the teacher's). Measured on a 15-minute demo teacher (mouth r 0.87), the
    # fast student's r after 10 steps: 0.75 with 5 solver steps and no weights (2.1 CPU min), 0.81 with 5 and α 4,
    # 0.83 with 2 and α 4 (1.3 CPU min)
    distill_solver_steps: int = 2
    distill_motion_loss_weight: float = 4.0
    threads: int = 1  # torch threads per process (the second core goes to a second process)
    parallel: bool = True  # distil both students, and generate the modes, in two processes at once

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            choices = ", ".join(PRESETS)
            raise UsageError(f"`preset` {self.preset!r} is not valid for the CPU demo; use one of {choices}.")
        if not 0.0 <= self.image_share < 1.0:
            raise UsageError(
                f"`image_share` {self.image_share} is not valid; use a fraction in [0, 1) (0: one joint stage)."
            )
        if not (math.isfinite(self.minutes) and self.minutes >= 1):
            raise UsageError(f"`minutes` {self.minutes} is not valid; use 1 or more (15 runs the default demo).")
        if not 0.0 <= self.teacher_min_share + self.student_min_share <= 1.0:
            raise UsageError("teacher_min_share + student_min_share must be a fraction of the budget in [0, 1].")
        if not 1.0 <= self.eval_seconds <= 10.0:
            raise UsageError(f"eval_seconds {self.eval_seconds} is not valid; use 1 to 10 seconds.")
        if self.threads < 1:
            raise UsageError(f"threads {self.threads} is not valid; use 1 or more.")

    def data_config(self) -> DemoDataConfig:
        """The demo dataset: bigger for the demo preset, just enough for tiny."""
        if self.preset == "tiny":
            return DemoDataConfig(clips=8, identities=2, size=64, seconds=2.2, seed=self.seed, clean_fraction=0.5)
        # 5 identities: the clean (tier-A) clips are every other one, so with 4 the held-out identity
        # (id3) and id1 would have no tier-A clip; with 5 every identity has some
        return DemoDataConfig(clips=24, identities=5, size=128, seconds=3.0, seed=self.seed, clean_fraction=0.5)


def plan_training_steps(budget_s: float, elapsed_s: float, step_s: float, reserve_s: float,
                        min_steps: int, max_steps: int) -> int:  # fmt: skip
    """Training steps the budget pays for: (budget − elapsed − reserve) / step time, clamped."""
    if step_s <= 0 or not math.isfinite(step_s):
        raise ValueError(f"step time must be positive, got {step_s}")
    steps = math.floor(max(0.0, budget_s - elapsed_s - reserve_s) / step_s)
    return int(min(max_steps, max(min_steps, steps)))


def contact_sheet(portrait: np.ndarray, rows: dict[str, np.ndarray], columns: int = 6, tile: int = 96) -> np.ndarray:
    """Portrait | frames over time, one row per video: (rows·tile, (columns+1)·tile + label, 3) uint8.

    ``portrait``: (H, W, 3) uint8; ``rows``: label → (T, H, W, 3) uint8 frames; each row shows
    ``columns`` frames evenly spaced over its T frames.
    """
    label_w = 90
    sheet = Image.new("RGB", (label_w + (columns + 1) * tile, tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)  # Pillow's scalable font (its bitmap default drops spaces)
    for r, (label, frames) in enumerate(rows.items()):
        picks = np.linspace(0, len(frames) - 1, columns).round().astype(int)
        tiles = [portrait, *(frames[i] for i in picks)]
        for c, image in enumerate(tiles):
            resized = Image.fromarray(image).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(resized, (label_w + c * tile, r * tile))
        draw.text((4, r * tile + tile // 2 - 7), label, fill="black", font=font)
    return np.asarray(sheet)


# --- time: probes, plans, processes ---------------------------------------------------------------


def median_step_seconds(checkpoint: Path) -> float:
    """Median seconds per step of the run logged in ``checkpoint/train_log.csv``: one slow step (a moment of
    load, the first batch's decoding) does not set the plan."""
    seconds = pd.read_csv(checkpoint / "train_log.csv")["seconds"].to_numpy(dtype=float)
    return float(np.median(np.diff(np.concatenate([[0.0], seconds]))))


def time_generation(checkpoint: Path, clip: HeldOutClip, work: Path, device, quiet: bool,
                    repeats: int = 2) -> tuple[float, float]:  # fmt: skip
    """(overhead s, s per 3-branch sampler step) of one held-out video: the best of ``repeats`` videos at 1
    and at 2 steps after a 1-step warm-up, so a moment of load does not inflate the plan (measured: a
    cold 1-step video took 28 s, a warm 2-step one 13 s)."""

    pipe = FadaPipeline.from_checkpoint(checkpoint, device=device)  # loaded once for every video

    def seconds(steps: int, name: str) -> float:
        config = GenerateConfig(steps=steps, crop=False)
        return generate_set(pipe, [clip], work / name, config, device, "fp32", quiet=True)[0].seconds

    seconds(1, "warm-up")
    one = min(seconds(1, f"steps1_{i}") for i in range(repeats))
    two = min(seconds(2, f"steps2_{i}") for i in range(repeats))
    per_step = max(two - one, 0.0)
    log(f"generation probe: {one:.1f} s at 1 step, {two:.1f} s at 2 steps (best of {repeats})", quiet=quiet)
    return max(one - per_step, 0.0), per_step


@dataclass(frozen=True)
class GenerationPlan:
    """How the held-out videos are made within their share of the budget."""

    teacher_steps: int  # DDIM steps of the teacher's videos
    seconds: float  # seconds of speech per held-out video
    reserve_s: float  # estimated seconds of generating and evaluating every mode


def generation_seconds(overhead_s: float, step_s: float, probe_seconds: float, plan_seconds: float,
                       teacher_steps: int, eval_s: float) -> float:  # fmt: skip
    """Estimated seconds of one held-out clip's videos in every mode: the teacher (``teacher_steps`` × 3
    branches), the balanced student (6 × 3), the fast one (6 × 1, counted as 3 three-branch steps), each
    driven by the speech and by the speech reversed; the probe's costs scale with the seconds of speech."""
    scale = plan_seconds / probe_seconds
    sampler_steps = teacher_steps + 6 + 3
    return GENERATION_MARGIN * (2 * scale * (len(MODES) * overhead_s + sampler_steps * step_s) + scale * eval_s)


def plan_generation(probe: tuple[float, float], probe_seconds: float, eval_s: float, clips: int, left_s: float,
                    config: DemoConfig) -> GenerationPlan:  # fmt: skip
    """The most teacher steps and speech seconds whose generation (every mode, ``clips`` held-out clips)
    fits in what the teacher's and the students' least shares leave of ``left_s``; on a slow machine
    the videos get shorter and the teacher samples fewer steps, the teacher does not train less."""
    overhead_s, step_s = probe
    cap = left_s - (config.teacher_min_share + config.student_min_share) * 60.0 * config.minutes
    most = config.generate_steps or TEACHER_STEP_LADDER[0]
    steps_tried = [most] + [s for s in TEACHER_STEP_LADDER if s < most]
    short = min(config.eval_seconds, SHORT_SECONDS)
    # fewer teacher steps first (down to 10), then shorter videos, then the fewest steps
    tried = [(steps, config.eval_seconds) for steps in steps_tried if steps >= 10 or steps == most]
    tried += [(steps, short) for steps in steps_tried if (steps, short) not in tried]
    plans = [
        GenerationPlan(
            steps, seconds, clips * generation_seconds(overhead_s, step_s, probe_seconds, seconds, steps, eval_s)
        )  # fmt: skip
        for steps, seconds in tried
    ]
    return next((plan for plan in plans if plan.reserve_s <= cap), plans[-1])


def run_jobs(jobs: list[tuple[Callable, tuple]], parallel: bool, threads: int) -> list:
    """Run ``fn(*args)`` for each job: in two spawned processes of ``threads`` torch threads at once when
    ``parallel``, else here one after the other. Results in job order; a job's error is raised here."""
    if not parallel or len(jobs) < 2:
        return [fn(*args) for fn, args in jobs]
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max_workers=2, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:  # fmt: skip
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        return [future.result() for future in futures]


def distill_student(out: Path, teacher: Path, mode: str, deadline: float, config: DemoConfig, device,
                    quiet: bool) -> tuple[Path, dict]:  # fmt: skip
    """Distil ``mode`` from ``teacher`` into ``out/students/<mode>``: probe steps, then resume up to
    ``deadline`` (seconds since the epoch, so that a student in another process keeps the same clock)."""
    student = out / "students" / mode
    probe_steps = config.distill_probe_steps
    options = dict(mode=mode, steps=probe_steps, batch_size=config.distill_batch_size, lr=config.distill_lr,
                   solver_steps=config.distill_solver_steps, motion_loss_weight=config.distill_motion_loss_weight,
                   seed=config.seed, checkpoint_every=10**6,
                   cfg_audio_range=config.distill_cfg_audio_range,
                   cfg_ref_range=config.distill_cfg_ref_range)  # fmt: skip
    manifest = out / "curated" / "distill.parquet"
    result = fit(DistillStage(teacher), manifest, student, overrides=options, device=device, quiet=quiet)
    step_s = median_step_seconds(student)
    steps = min(config.max_steps, probe_steps + plan_training_steps(deadline - time.time(), 0.0, step_s, 0.0, 0,
                                                                    10**9))  # fmt: skip
    log(f"distill {mode}: {step_s:.2f} s/step → {steps} steps", quiet=quiet)
    if steps > probe_steps:
        result = fit(DistillStage(teacher), manifest, student, overrides=options | {"steps": steps}, resume=True,
                     device=device, quiet=quiet)  # fmt: skip
    losses = {f"final_{name}": result.means[name] for name in ("loss", "loss_distill", "loss_gt")}
    return student, {"steps": result.steps, "seconds_per_step": step_s, **losses}


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UsageError(f"`out` {out} exists and is not a previous `fada demo` folder; name a new or empty folder.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def split_held_out(curated: pd.DataFrame, truth: pd.DataFrame, held_out: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows: other identities; held-out rows: the held-out identity's tier A/B clips)."""
    identity_of = dict(zip(truth["clip_id"], truth["identity"], strict=True))
    identity = curated["source"].map(lambda source: identity_of.get(Path(source).stem, ""))
    held = curated[(identity == held_out) & curated["tier"].isin(["A", "B"])]
    return curated[identity != held_out], held.sort_values("tier")  # tier A first


@dataclass(frozen=True)
class DemoSplit:
    """What curate leaves for the later stages: manifests, the held-out clips and their portrait."""

    curated: Path  # the run's curated/ folder: train.parquet, distill.parquet, held_out.parquet
    held_identity: str
    clips: list[HeldOutClip]  # generated and evaluated per mode
    portrait: Path  # the held-out identity's portrait
    tiers: dict  # curate's tier counts
    held_frames: int  # frames of the held-out clips
    curate_s_per_frame: float  # curate's cost per frame (eval reads videos at about that rate)

    @property
    def train(self) -> Path:
        return self.curated / "train.parquet"

    @property
    def distill(self) -> Path:
        return self.curated / "distill.parquet"

    @property
    def held_out(self) -> Path:
        return self.curated / "held_out.parquet"


def make_data(out: Path, config: DemoConfig, quiet: bool) -> pd.DataFrame:
    """1. The demo dataset in ``out/data``; returns its ground truth."""
    return generate_demo_data(out / "data", config.data_config(), quiet=quiet)


def curate_and_split(out: Path, config: DemoConfig, truth: pd.DataFrame, quiet: bool) -> DemoSplit:
    """2. Curate ``out/data`` into ``out/curated``, hold the last identity out, write the three manifests."""
    began = time.perf_counter()
    data_config = config.data_config()
    curate_config = CurateConfig(size=data_config.size, scoring=ScoringSettings(iqa_metric=None),
                                 workers=2 if config.parallel else 1)  # fmt: skip
    summary = run_curate([out / "data" / "clips"], out / "curated", curate_config, quiet=quiet)
    curated = pd.read_parquet(summary.manifest)
    held_identity = f"id{data_config.identities - 1}"
    train_rows, held_rows = split_held_out(curated, truth, held_identity)
    if not (train_rows["tier"] == "A").any() or held_rows.empty:
        raise UsageError(
            f"curate gave {int((train_rows['tier'] == 'A').sum())} tier-A training clips and {len(held_rows)} "
            f"held-out clips of {held_identity}; rerun with another `seed`."
        )
    held_rows = held_rows.head(config.eval_clips)
    folder, extra = out / "curated", {"held_out_identity": held_identity}
    write_manifest(train_rows, folder / "train.parquet", "fada demo", extra)
    write_manifest(train_rows[train_rows["tier"].isin(["A", "B"])], folder / "distill.parquet", "fada demo", extra)
    write_manifest(held_rows, folder / "held_out.parquet", "fada demo", extra)
    portrait = out / "data" / "identities" / f"{held_identity}.png"
    clips = [HeldOutClip(Path(p).stem, portrait, clip_path(folder / "held_out.parquet", p))
             for p in held_rows["video_path"]]  # fmt: skip
    per_frame_s = (time.perf_counter() - began) / max(1, int(curated["n_frames"].sum()))
    return DemoSplit(folder, held_identity, clips, portrait, summary.tiers, int(held_rows["n_frames"].sum()),
                     per_frame_s)  # fmt: skip


def teacher_options(config: DemoConfig) -> dict[str, dict]:
    """The image-stage and video-stage options of the demo recipe (probe-length steps): the overrides
    `training.fit` resolves, as it does `fada train-teacher`'s options (``--preset`` is ``config.preset``)."""
    common = dict(steps=config.probe_steps, lr=config.teacher_lr, loss_weighting=config.loss_weighting,
                  ema=config.teacher_ema, seed=config.seed, checkpoint_every=10**6,
                  identity_augment=config.identity_augment, motion_loss_weight=config.motion_loss_weight)  # fmt: skip
    return {
        "image": {"stage": "image", "batch_size": config.image_batch_size, **common},
        "video": {"stage": "video", "batch_size": config.batch_size, **common},
        "joint": {"stage": "joint", "batch_size": config.batch_size, **common},
    }


def teacher_seconds(config: DemoConfig, available_s: float) -> float:
    """The teacher's training time: `TEACHER_SHARE` of what the reserve leaves, at least
    ``teacher_min_share`` of the budget, and no more than leaves the students ``student_min_share``."""
    budget_s = 60.0 * config.minutes
    share = min(TEACHER_SHARE * available_s, available_s - config.student_min_share * budget_s)
    return max(config.teacher_min_share * budget_s, share)


def train_teacher_stages(out: Path, split: DemoSplit, config: DemoConfig, deadline: float, reserve_s: float,
                         device, quiet: bool) -> tuple[Path, dict]:  # fmt: skip
    """3. The teacher: one joint stage into ``out/teacher/joint`` (``image_share`` 0), or the two stages
    into ``out/teacher/image`` and ``out/teacher/video``.

    Each stage is probed (a few timed steps), then resumes up to its share of the teacher's time
    (`teacher_seconds` of what is left before ``deadline`` after ``reserve_s``): the image stage
    ``image_share`` of it, the video stage, started from it, the rest; the last stage then resumes
    once more for what its measured pace leaves of that time.
    """
    began = time.time()
    options = teacher_options(config)
    stages = ("image", "video") if config.image_share > 0 else ("joint",)
    folders = {stage: out / "teacher" / stage for stage in stages}

    def train(stage: str, steps: int | None = None, **how) -> FitResult:
        overrides = options[stage] if steps is None else options[stage] | {"steps": steps}
        return fit(TeacherStage(), split.train, folders[stage], preset=config.preset, overrides=overrides,
                   device=device, quiet=quiet, **how)  # fmt: skip

    for i, stage in enumerate(stages):  # the probes; the video stage's starts from the image stage's probe
        train(stage, init_from=folders[stages[0]] if i else None)
    step_s = {stage: median_step_seconds(folders[stage]) for stage in stages}
    teacher_end = began + teacher_seconds(config, deadline - began - reserve_s)
    teacher_s = teacher_end - time.time()
    shares = {"image": config.image_share, "video": 1 - config.image_share, "joint": 1.0}
    results = {}
    for i, stage in enumerate(stages):
        steps = plan_training_steps(shares[stage] * teacher_s, 0.0, step_s[stage], 0.0, config.min_steps,
                                    config.max_steps)  # fmt: skip
        if stage != "video":  # the video stage restarts from the finished image stage: its probe only timed it
            steps += config.probe_steps
        log(f"teacher: {stage} stage {step_s[stage]:.2f} s/step → {steps} steps", quiet=quiet)
        how = {"init_from": folders[stages[0]], "overwrite": True} if i else {"resume": True}
        results[stage] = train(stage, steps, **how)
    # the probe's steps decode the clips (their first draws) and ran slower than the steps after them: the
    # last stage resumes for the steps its measured pace fits in the teacher's time still left (one spare)
    last = stages[-1]
    extra = math.floor((teacher_end - time.time()) / median_step_seconds(folders[last])) - 1
    if extra > 0 and results[last].steps < config.max_steps:
        steps = min(config.max_steps, results[last].steps + extra)
        log(f"teacher: {last} stage ahead of its plan → {steps} steps", quiet=quiet)
        results[last] = train(last, steps, resume=True)
    summary = {
        "checkpoint": str(folders[stages[-1]]),
        "seconds": time.time() - began,
        "stages": {
            stage: {"steps": result.steps, "final_loss": result.final_loss, "seconds_per_step": step_s[stage]}
            for stage, result in results.items()
        },  # fmt: skip
        "steps": sum(result.steps for result in results.values()),
    }
    return folders[stages[-1]], summary


def generation_plan(split: DemoSplit, out: Path, config: DemoConfig, deadline: float, device,
                    quiet: bool) -> GenerationPlan:  # fmt: skip
    """What generating and evaluating every mode will cost, from timing one video of an untrained model of
    the preset (its cost does not depend on the weights), and the videos that fit (`plan_generation`)."""
    from pipelines.media import AUDIO_SR, VIDEO_FPS, read_audio, write_audio

    checkpoint = fresh_teacher(out / "probe" / "fresh", config)
    # the probe videos are 2 clips long (the cost grows with the clips, not with anything else of the speech)
    probe_seconds = 2 * get_preset(config.preset).frames_per_clip / VIDEO_FPS
    speech = out / "probe" / "speech.wav"
    write_audio(speech, read_audio(split.clips[0].audio)[: int(round(probe_seconds * AUDIO_SR))])
    probe = time_generation(checkpoint, replace(split.clips[0], audio=speech), out / "probe", device, quiet)
    # eval reads the generated and the reference video per mode, and both videos' frames again for the mouth
    eval_s = 9 * split.curate_s_per_frame * split.held_frames / len(split.clips)
    plan = plan_generation(probe, probe_seconds, eval_s, len(split.clips), deadline - time.time(), config)
    log(f"generation: teacher {plan.teacher_steps} steps, {plan.seconds:g} s of speech per video, "
        f"{plan.reserve_s:.0f} s kept", quiet=quiet)  # fmt: skip
    return plan


def distill_students(out: Path, teacher: Path, config: DemoConfig, deadline: float, reserve_s: float, device,
                     quiet: bool) -> tuple[dict[str, Path], dict]:  # fmt: skip
    """4. Both students from the trained teacher: at once in two processes (each until the generation
    reserve), or one after the other, each on its share of what is left."""
    end = deadline - reserve_s
    if config.parallel:
        jobs = [(distill_student, (out, teacher, mode, end, config, device, True)) for mode in STUDENT_MODES]
        log(f"distilling {' and '.join(STUDENT_MODES)} at once, {end - time.time():.0f} s", quiet=quiet)
        done = run_jobs(jobs, True, config.threads)
    else:
        done = []
        for i, mode in enumerate(STUDENT_MODES):
            share_end = time.time() + (end - time.time()) / (len(STUDENT_MODES) - i)
            done.append(distill_student(out, teacher, mode, share_end, config, device, quiet))
    checkpoints = {mode: path for mode, (path, _) in zip(STUDENT_MODES, done, strict=True)}
    students = {mode: summary for mode, (_, summary) in zip(STUDENT_MODES, done, strict=True)}
    return checkpoints, students


# --- 5.-6. generation and evaluation ---------------------------------------------------------------


def held_out_speech(split: DemoSplit, seconds: float, folder: Path) -> tuple[list[HeldOutClip], list[HeldOutClip]]:
    """Each held-out clip's first ``seconds`` of speech, and the same reversed in time, as wav files."""
    from pipelines.media import AUDIO_SR, read_audio, write_audio

    folder.mkdir(parents=True, exist_ok=True)
    speech, reverse = [], []
    for clip in split.clips:
        audio = read_audio(clip.audio)[: int(round(seconds * AUDIO_SR))]
        write_audio(folder / f"{clip.stem}.wav", audio)
        write_audio(folder / f"{clip.stem}_reversed.wav", audio[::-1].copy())
        speech.append(replace(clip, audio=folder / f"{clip.stem}.wav"))
        reverse.append(replace(clip, audio=folder / f"{clip.stem}_reversed.wav"))
    return speech, reverse


def identity_anchors(split: DemoSplit, size: int) -> dict[str, float]:
    """The identity measure's ceiling (the real held-out clips against the portrait, at the model's size) and
    floor (the nearest other identity's portrait against it)."""
    import cv2

    from pipelines.generate import crop_portrait
    from pipelines.metrics.identity import identity_scores

    def model_input(path: Path) -> np.ndarray:
        return crop_portrait(np.asarray(Image.open(path).convert("RGB")), size, False, 1.0, path)

    target = model_input(split.portrait)
    real = [read_video(clip.audio)[0] for clip in split.clips]
    real = np.concatenate([[cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in v] for v in real])
    others = sorted(p for p in split.portrait.parent.glob("*.png") if p != split.portrait)
    floors = [identity_scores(model_input(p)[None], target) for p in others]
    ceiling = identity_scores(real, target)
    return {
        "identity_psnr16_ceiling": ceiling["identity_psnr16"],
        "identity_psnr16_floor": max(f["identity_psnr16"] for f in floors),
        "identity_colour_de_ceiling": ceiling["identity_colour_de"],
        "identity_colour_de_floor": min(f["identity_colour_de"] for f in floors),
    }


def generate_mode(mode: str, checkpoint: Path, speech: list[HeldOutClip], reverse: list[HeldOutClip], out: Path,
                  held_out: Path, gen_config: GenerateConfig, device, quiet: bool) -> dict:  # fmt: skip
    """One mode's videos (speech- and reversed-speech-driven), its eval against the held-out clips, its
    face rate and its mouth-vs-speech r of both: the mode's summary row (without the anchors)."""
    from pipelines.media import read_audio
    from pipelines.metrics.proxies import portrait_mouth_r

    pipe = FadaPipeline.from_checkpoint(checkpoint, device=device)
    stats = generate_set(pipe, speech, out / "generated" / mode, gen_config, device, "fp32", quiet)
    reversed_stats = generate_set(pipe, reverse, out / "generated" / f"{mode}_reversed", gen_config, device, "fp32",
                                  quiet)  # fmt: skip
    report = evaluate(out / "generated" / mode, held_out, out / "eval" / mode, EvalConfig(iqa_metric=None),
                      quiet=quiet)  # fmt: skip
    values = metric_values(report)
    r_speech, r_reversed, face_rates = [], [], []
    for clip, made, made_reversed in zip(speech, stats, reversed_stats, strict=True):
        frames, _ = read_video(Path(made.video))
        frames_reversed, _ = read_video(Path(made_reversed.video))
        portrait = np.asarray(Image.open(clip.image).convert("RGB"))
        audio = read_audio(clip.audio)  # both r against the forward speech
        r_speech.append(portrait_mouth_r(frames, audio, portrait))
        r_reversed.append(portrait_mouth_r(frames_reversed, audio, portrait))
        face_rates.append(face_found_rate(frames))  # frames upscaled to 256 px
    return {
        "checkpoint": str(checkpoint),
        "nfe": stats[0].nfe,
        "steps": stats[0].steps,
        "seconds_per_video_second": float(np.mean([s.seconds_per_video_second for s in stats])),
        **{name: values.get(name) for name in DEMO_METRICS},
        "routes": {m.name: m.route for m in report.metrics if m.route},  # how each proxy read the face
        "face_rate": float(np.mean(face_rates)),
        "mouth_r": float(np.nanmean(r_speech)) if np.isfinite(r_speech).any() else None,
        "mouth_r_reversed": float(np.nanmean(r_reversed)) if np.isfinite(r_reversed).any() else None,
        "notes": {m.name: m.note for m in report.metrics if m.status == "insufficient"},
        "videos": [s.video for s in stats],
        "reversed_videos": [s.video for s in reversed_stats],
    }


def generate_and_evaluate(out: Path, split: DemoSplit, checkpoints: dict[str, Path], config: DemoConfig,
                          plan: GenerationPlan, device, quiet: bool) -> dict[str, dict]:  # fmt: skip
    """5.–6. The held-out clips per mode (two processes at once with ``config.parallel``), evaluated against
    them: one summary row per mode, with the identity anchors and the speed-up over the teacher."""
    speech, reverse = held_out_speech(split, plan.seconds, out / "generated" / "speech")
    jobs = []
    for mode, checkpoint in checkpoints.items():  # the teacher first: its job is the longest
        steps = plan.teacher_steps if mode == "teacher" else None  # students: their own 6 steps
        scales = {k: v for k, v in (("cfg_audio", config.cfg_audio), ("cfg_ref", config.cfg_ref)) if v is not None}
        gen_config = GenerateConfig(steps=steps, seed=config.seed, crop=False, **scales)
        jobs.append((generate_mode, (mode, checkpoint, speech, reverse, out, split.held_out, gen_config, device,
                                     quiet or config.parallel)))  # fmt: skip
    log(f"generating and evaluating {', '.join(checkpoints)}", quiet=quiet)
    modes = dict(zip(checkpoints, run_jobs(jobs, config.parallel, config.threads), strict=True))
    from pipelines.metrics.identity import fraction_of_range

    anchors = identity_anchors(split, get_preset(config.preset).sample_size)
    for row in modes.values():
        row["speed_up"] = modes["teacher"]["seconds_per_video_second"] / row["seconds_per_video_second"]
        row["identity_fraction"] = (
            None
            if row["identity_psnr16"] is None
            else fraction_of_range(row["identity_psnr16"], anchors["identity_psnr16_floor"],
                                   anchors["identity_psnr16_ceiling"])
        )  # fmt: skip
        row.update(anchors)
    return modes


def targets_met(modes: dict[str, dict]) -> dict[str, dict[str, bool]]:
    """Per mode (teacher, fast), whether each target of `TARGETS` holds (a missing figure does not)."""

    def at_least(value, bound) -> bool:
        return value is not None and math.isfinite(value) and value >= bound

    checks = {}
    for mode in ("teacher", "fast"):
        row = modes[mode]
        r, r_rev = row.get("mouth_r"), row.get("mouth_r_reversed")
        checks[mode] = {
            "face_rate": at_least(row.get("face_rate"), TARGETS["face_rate"]),
            "identity_fraction": at_least(row.get("identity_fraction"), TARGETS["identity_fraction"]),
            "mouth_r": at_least(r, TARGETS["mouth_r"]),
            "mouth_r_above_reversed": r is not None
            and r_rev is not None
            and at_least(r - r_rev, TARGETS["mouth_r_above_reversed"]),
        }
    teacher_r, fast_r = modes["teacher"].get("mouth_r"), modes["fast"].get("mouth_r")
    checks["fast"]["fast_r_within"] = (
        teacher_r is not None and fast_r is not None and abs(fast_r - teacher_r) <= TARGETS["fast_r_within"]
    )
    return checks


def write_contact_sheet(out: Path, split: DemoSplit, modes: dict[str, dict]) -> Path:
    """7. Portrait | frames over time: the held-out clip, then one row per mode."""
    reference_frames, _ = read_video(split.clips[0].audio)  # the held-out clip itself (its audio drove the video)
    rows = {"held-out clip": reference_frames} | {mode: read_video(Path(row["videos"][0]))[0]
                                                  for mode, row in modes.items()}  # fmt: skip
    portrait_rgb = np.asarray(Image.open(split.portrait).convert("RGB"))
    sheet = out / "contact_sheet.png"
    Image.fromarray(contact_sheet(portrait_rgb, rows)).save(sheet)
    return sheet


def run_demo(out: Path, config: DemoConfig = DemoConfig(), device: str = "cpu", quiet: bool = False,
             started: float | None = None) -> dict:  # fmt: skip
    """Run the lifecycle into ``out``; returns (and writes) the summary. The budget counts from ``started``
    (seconds since the epoch; default now): the command passes its own start, so that importing torch
    counts too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run_demo(Path(out), config, device, quiet, time.time() if started is None else started)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, config: DemoConfig, device: str, quiet: bool, started: float) -> dict:
    timings = {"startup": round(time.time() - started, 2)}
    deadline = started + 60.0 * config.minutes  # seconds since the epoch: one clock for every process
    torch_device = resolve_device(device)
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"config": asdict(config)}, indent=2) + "\n")

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 2)
        return time.time()

    t = time.time()
    truth = make_data(out, config, quiet)
    t = lap("demo_data", t)
    split = curate_and_split(out, config, truth, quiet)
    t = lap("curate", t)
    plan = generation_plan(split, out, config, deadline, torch_device, quiet)
    t = lap("generation_probe", t)
    teacher, teacher_summary = train_teacher_stages(out, split, config, deadline, plan.reserve_s, torch_device, quiet)
    t = lap("train_teacher", t)
    checkpoints, students = distill_students(out, teacher, config, deadline, plan.reserve_s, torch_device, quiet)
    checkpoints = {"teacher": teacher, **checkpoints}
    t = lap("distill", t)
    modes = generate_and_evaluate(out, split, checkpoints, config, plan, torch_device, quiet)
    t = lap("generate_eval", t)
    sheet = write_contact_sheet(out, split, modes)
    summary_payload = {
        "out": str(out),
        "config": asdict(config),
        "model_preset": config.preset,
        "model": get_preset(config.preset).to_dict(),
        "held_out_identity": split.held_identity,
        "tiers": split.tiers,
        "generation": asdict(plan),
        "teacher": teacher_summary,
        "students": students,
        "modes": modes,
        "targets": TARGETS,
        "targets_met": targets_met(modes),
        "contact_sheet": str(sheet),
        "timings_s": timings,
        "budget_s": 60.0 * config.minutes,
        "total_s": round(time.time() - started, 2),
        "torch_threads": config.threads,
    }
    (out / SUMMARY).write_text(json.dumps(summary_payload, indent=2, default=str) + "\n")
    return summary_payload


def fresh_teacher(folder: Path, config: DemoConfig) -> Path:
    """An untrained teacher checkpoint of the demo's preset (for timing generation before training)."""
    torch.manual_seed(config.seed)
    model = FadaModel.from_config(get_preset(config.preset))
    return save_checkpoint(folder, stage="teacher", mode="teacher", config={"model": model.config.to_dict()},
                           components=model.components(), step=0)  # fmt: skip
