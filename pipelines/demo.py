"""`fada demo`: the whole lifecycle on the embedded demo dataset, on CPU, within a time budget.

1. demo-data: synthetic talking portraits with known ground truth (`pipelines.demo_data`);
2. curate: score and tier them (`pipelines.curate`); the last identity is held out of training;
3. train-teacher on the tier-A clips of the other identities in two stages (DESIGN §3b): the image
   stage (single frames, reference net + denoising net), then the video stage (the audio path and
   the temporal layers on F-frame windows). A few probe steps time each stage, then each resumes up
   to the steps its share of the minutes left pays for (`DemoConfig.image_share`);
4. distill the trained teacher on the tier-A and B clips of the same identities into a fast
   (6 NFE) and a balanced (18 NFE) student, each the same way: probe steps, then resume up to
   its share of what is left;
5. generate, per mode (teacher, balanced, fast), one video per held-out clip from the held-out
   identity's portrait and the clip's own speech (`pipelines.cfg_sweep.generate_set`);
6. eval each mode against the held-out clips (`pipelines.evaluate`);
7. the summary: one table row per mode, a contact sheet PNG, ``demo_summary.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
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
TEACHER_SHARE = 0.7  # of the minutes left after the probes and the generate + eval reserve; the students split the rest
PRESETS = ("tiny", "demo")
# eval rows copied into each mode's summary row (the `fada demo` table's metric columns)
DEMO_METRICS = ("sync_proxy", "sync_proxy_offset", "e_fid_proxy", "iqa", "piqe", "sharpness", "psnr", "ssim")


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
    image_share: float = 0.7  # of the teacher's time, spent in the image stage; the video stage gets the rest
    image_batch_size: int = 8  # single frames per image-stage step
    teacher_lr: float = 1e-3  # AdamW learning rate of both teacher stages
    loss_weighting: str = "v"  # teacher loss weighting (`pipelines.train_teacher.loss_weights`)
    teacher_ema: float = 0.0  # EMA decay of the teacher's weights (0 = off)
    eval_clips: int = 1  # held-out clips generated and evaluated per mode (a 3-s teacher video costs minutes)
    generate_steps: int | None = None  # DDIM steps of the teacher (None = its default, 25 → NFE 75)
    distill_lr: float = 1e-4  # AdamW learning rate of both students (short runs: larger than distill's default)
    distill_probe_steps: int = 2  # distillation steps timed per student before its budget is set
    distill_solver_steps: int = 5  # teacher DDIM steps per PeRFlow window (distill's default 10 costs twice as much)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            choices = ", ".join(PRESETS)
            raise UsageError(f"`preset` {self.preset!r} is not valid for the CPU demo; use one of {choices}.")
        if not 0.0 < self.image_share < 1.0:
            raise UsageError(f"image_share {self.image_share} is not valid; use a fraction between 0 and 1.")
        if not (math.isfinite(self.minutes) and self.minutes >= 1):
            raise UsageError(f"`minutes` {self.minutes} is not valid; use 1 or more (15 runs the default demo).")

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


def time_generation(checkpoint: Path, clip: HeldOutClip, work: Path, device, quiet: bool) -> tuple[float, float]:
    """(overhead s, s per sampler step) of one held-out video, from generating it with 1 and 2 steps
    after a 1-step warm-up (measured: a cold 1-step video took 28 s, a warm 2-step one 13 s)."""

    pipe = FadaPipeline.from_checkpoint(checkpoint, device=device)  # loaded once for the three videos

    def seconds(steps: int, name: str) -> float:
        config = GenerateConfig(steps=steps, crop=False)
        return generate_set(pipe, [clip], work / name, config, device, "fp32", quiet=True)[0].seconds

    seconds(1, "warm-up")
    one, two = seconds(1, "steps1"), seconds(2, "steps2")
    per_step = max(two - one, 0.0)
    log(f"generation probe: {one:.1f} s at 1 step, {two:.1f} s at 2 steps", quiet=quiet)
    return max(one - per_step, 0.0), per_step


def distill_student(out: Path, teacher: Path, mode: str, share_s: float, config: DemoConfig, device,
                    quiet: bool) -> tuple[Path, dict]:  # fmt: skip
    """Distil ``mode`` from ``teacher`` into ``out/students/<mode>``: probe steps, then resume up to ``share_s``."""
    student = out / "students" / mode
    probe_steps = config.distill_probe_steps
    options = dict(mode=mode, steps=probe_steps, batch_size=config.batch_size, lr=config.distill_lr,
                   solver_steps=config.distill_solver_steps, seed=config.seed, checkpoint_every=10**6)  # fmt: skip
    manifest = out / "curated" / "distill.parquet"
    probe = fit(DistillStage(teacher), manifest, student, overrides=options, device=device, quiet=quiet)
    step_s = probe.seconds / probe.steps_this_run
    steps = min(config.max_steps, probe_steps + plan_training_steps(share_s, probe.seconds, step_s, 0.0, 0, 10**9))
    log(f"distill {mode}: {step_s:.2f} s/step → {steps} steps", quiet=quiet)
    result = probe
    if steps > probe_steps:
        result = fit(DistillStage(teacher), manifest, student, overrides=options | {"steps": steps}, resume=True,
                     device=device, quiet=quiet)  # fmt: skip
    losses = {f"final_{name}": result.means[name] for name in ("loss", "loss_distill", "loss_gt")}
    summary = {"steps": result.steps, "seconds_per_step": step_s, **losses}
    return student, summary


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
    curate_config = CurateConfig(size=data_config.size, scoring=ScoringSettings(iqa_metric=None))
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
                  ema=config.teacher_ema, seed=config.seed, checkpoint_every=10**6)  # fmt: skip
    return {
        "image": {"stage": "image", "batch_size": config.image_batch_size, **common},
        "video": {"stage": "video", "batch_size": config.batch_size, **common},
    }


def train_teacher_stages(out: Path, split: DemoSplit, config: DemoConfig, deadline: float, reserve_s: float,
                         device, quiet: bool) -> tuple[Path, dict]:  # fmt: skip
    """3. The two teacher stages into ``out/teacher/image`` and ``out/teacher/video``.

    Each stage is probed (a few timed steps), then the image stage resumes up to its share of the
    teacher's time (``TEACHER_SHARE`` of what is left before ``deadline`` after ``reserve_s``) and
    the video stage, started from it, up to the rest.
    """
    options = teacher_options(config)
    image, video = out / "teacher" / "image", out / "teacher" / "video"

    def train(folder: Path, stage: str, steps: int | None = None, **how) -> FitResult:
        overrides = options[stage] if steps is None else options[stage] | {"steps": steps}
        return fit(TeacherStage(), split.train, folder, preset=config.preset, overrides=overrides, device=device,
                   quiet=quiet, **how)  # fmt: skip

    probe_image = train(image, "image")
    probe_video = train(video, "video", init_from=image)
    step_s = {"image": probe_image.seconds / probe_image.steps_this_run,
              "video": probe_video.seconds / probe_video.steps_this_run}  # fmt: skip
    teacher_s = TEACHER_SHARE * max(0.0, deadline - time.perf_counter() - reserve_s)
    image_steps = config.probe_steps + plan_training_steps(
        config.image_share * teacher_s, 0.0, step_s["image"], 0.0, config.min_steps, config.max_steps
    )
    log(f"teacher: {teacher_s:.0f} s; image stage {step_s['image']:.2f} s/step → {image_steps} steps", quiet=quiet)
    result = train(image, "image", image_steps, resume=True)
    # the video stage restarts from the finished image stage: the probe only timed it
    left_s = teacher_s * (1 - config.image_share) - step_s["video"] * config.probe_steps
    video_steps = plan_training_steps(left_s, 0.0, step_s["video"], 0.0, config.min_steps, config.max_steps)
    log(f"teacher: video stage {step_s['video']:.2f} s/step → {video_steps} steps", quiet=quiet)
    video_result = train(video, "video", video_steps, init_from=image, overwrite=True)
    summary = {
        "checkpoint": str(video),
        "stages": {
            "image": {"steps": result.steps, "final_loss": result.final_loss, "seconds_per_step": step_s["image"]},
            "video": {
                "steps": video_result.steps,
                "final_loss": video_result.final_loss,
                "seconds_per_step": step_s["video"],
            },
        },  # fmt: skip
        "steps": result.steps + video_result.steps,
    }
    return video, summary


def generation_reserve(split: DemoSplit, checkpoint: Path, out: Path, config: DemoConfig, device,
                       quiet: bool) -> float:  # fmt: skip
    """Seconds kept for generating and evaluating every mode, from timing one video at 1 and 2 steps."""
    gen_overhead_s, gen_step_s = time_generation(checkpoint, split.clips[0], out / "probe", device, quiet)
    # every mode's videos are paid for at the cost of a 3-branch step: teacher steps, then 6 + 6 student steps
    sampler_steps = (config.generate_steps or 25) + 2 * 6
    reserve_s = len(split.clips) * (3 * gen_overhead_s + sampler_steps * gen_step_s)
    return reserve_s + 6 * split.curate_s_per_frame * split.held_frames  # eval reads generated + reference, per mode


def distill_students(out: Path, teacher: Path, config: DemoConfig, deadline: float, reserve_s: float, device,
                     quiet: bool) -> tuple[dict[str, Path], dict]:  # fmt: skip
    """4. Both students from the trained teacher, each on its share of what is left before ``deadline``."""
    checkpoints, students = {}, {}
    for i, mode in enumerate(STUDENT_MODES):
        share_s = (deadline - time.perf_counter() - reserve_s) / (len(STUDENT_MODES) - i)
        checkpoints[mode], students[mode] = distill_student(out, teacher, mode, share_s, config, device, quiet)
    return checkpoints, students


def generate_and_evaluate(out: Path, split: DemoSplit, checkpoints: dict[str, Path], config: DemoConfig, device,
                          quiet: bool) -> dict[str, dict]:  # fmt: skip
    """5.–6. The held-out clips per mode, evaluated against them: one summary row per mode."""
    modes = {}
    for mode, checkpoint in checkpoints.items():
        steps = config.generate_steps if mode == "teacher" else None  # students: their own 6 steps
        gen_config = GenerateConfig(steps=steps, seed=config.seed, crop=False)
        stats = generate_set(checkpoint, split.clips, out / "generated" / mode, gen_config, device, "fp32", quiet)
        report = evaluate(out / "generated" / mode, split.held_out, out / "eval" / mode, EvalConfig(iqa_metric=None),
                          quiet=quiet)  # fmt: skip
        values = metric_values(report)
        modes[mode] = {
            "checkpoint": str(checkpoint),
            "nfe": stats[0].nfe,
            "seconds_per_video_second": float(np.mean([s.seconds_per_video_second for s in stats])),
            **{name: values.get(name) for name in DEMO_METRICS},
            "routes": {m.name: m.route for m in report.metrics if m.route},  # how each proxy read the face
            # share of generated frames where mediapipe finds a face (frames upscaled to 256 px)
            "face_rate": float(np.mean([face_found_rate(read_video(Path(s.video))[0]) for s in stats])),
            "notes": {m.name: m.note for m in report.metrics if m.status == "insufficient"},
            "videos": [s.video for s in stats],
        }
    for row in modes.values():
        row["speed_up"] = modes["teacher"]["seconds_per_video_second"] / row["seconds_per_video_second"]
    return modes


def write_contact_sheet(out: Path, split: DemoSplit, modes: dict[str, dict]) -> Path:
    """7. Portrait | frames over time: the held-out clip, then one row per mode."""
    reference_frames, _ = read_video(split.clips[0].audio)  # the held-out clip itself (its audio drove the video)
    rows = {"held-out clip": reference_frames} | {mode: read_video(Path(row["videos"][0]))[0]
                                                  for mode, row in modes.items()}  # fmt: skip
    portrait_rgb = np.asarray(Image.open(split.portrait).convert("RGB"))
    sheet = out / "contact_sheet.png"
    Image.fromarray(contact_sheet(portrait_rgb, rows)).save(sheet)
    return sheet


def run_demo(out: Path, config: DemoConfig = DemoConfig(), device: str = "cpu", quiet: bool = False) -> dict:
    """Run the lifecycle into ``out``; returns (and writes) the summary."""
    started, timings = time.perf_counter(), {}
    deadline = started + 60.0 * config.minutes
    out = Path(out)
    torch_device = resolve_device(device)
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"config": asdict(config)}, indent=2) + "\n")

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    t = time.perf_counter()
    truth = make_data(out, config, quiet)
    t = lap("demo_data", t)
    split = curate_and_split(out, config, truth, quiet)
    t = lap("curate", t)
    # the generate + eval reserve is timed on a fresh model of the preset (its cost does not depend on the weights)
    reserve_s = generation_reserve(split, fresh_teacher(out / "probe" / "fresh", config), out, config,
                                   torch_device, quiet)  # fmt: skip
    teacher, teacher_summary = train_teacher_stages(out, split, config, deadline, reserve_s, torch_device, quiet)
    t = lap("train_teacher", t)
    checkpoints, students = distill_students(out, teacher, config, deadline, reserve_s, torch_device, quiet)
    checkpoints = {"teacher": teacher, **checkpoints}
    t = lap("distill", t)
    modes = generate_and_evaluate(out, split, checkpoints, config, torch_device, quiet)
    t = lap("generate_eval", t)
    sheet = write_contact_sheet(out, split, modes)
    summary_payload = {
        "out": str(out),
        "config": asdict(config),
        "model_preset": config.preset,
        "held_out_identity": split.held_identity,
        "tiers": split.tiers,
        "teacher": teacher_summary,
        "students": students,
        "modes": modes,
        "contact_sheet": str(sheet),
        "timings_s": timings,
        "budget_s": 60.0 * config.minutes,
        "total_s": round(time.perf_counter() - started, 2),
    }
    (out / SUMMARY).write_text(json.dumps(summary_payload, indent=2, default=str) + "\n")
    return summary_payload


def fresh_teacher(folder: Path, config: DemoConfig) -> Path:
    """An untrained teacher checkpoint of the demo's preset (for timing generation before training)."""
    torch.manual_seed(config.seed)
    model = FadaModel.from_config(get_preset(config.preset))
    return save_checkpoint(folder, stage="teacher", mode="teacher", config={"model": model.config.to_dict()},
                           components=model.components(), step=0)  # fmt: skip
