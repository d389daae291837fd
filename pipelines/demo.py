"""`fada demo`: the whole lifecycle on the embedded demo dataset, on CPU, within a time budget.

1. demo-data: synthetic talking portraits with known ground truth (`pipelines.demo_data`);
2. curate: score and tier them (`pipelines.curate`); the last identity is held out of training;
3. train-teacher on the tier-A clips of the other identities: a few probe steps measure the step
   time, then training resumes up to the number of steps its share of the minutes left pays for;
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from filters.base import ScoringSettings
from pipelines.cfg_sweep import HeldOutClip, generate_set, metric_values
from pipelines.curate import CurateConfig, run_curate
from pipelines.demo_data import DemoDataConfig, generate_demo_data
from pipelines.devices import resolve_device
from pipelines.distill import DistillConfig, distill
from pipelines.errors import UsageError
from pipelines.evaluate import EvalConfig, evaluate
from pipelines.generate import GenerateConfig
from pipelines.manifest import clip_path, write_manifest
from pipelines.media import read_video
from pipelines.model_config import get_preset
from pipelines.progress import log
from pipelines.train_teacher import TrainConfig, train_teacher

MARKER = "fada_demo.json"  # written first into DIR: marks a folder a rerun may replace
SUMMARY = "demo_summary.json"
STUDENT_MODES = ("balanced", "fast")  # distilled after the teacher, in this order
TEACHER_SHARE = 0.5  # of the minutes left after the probes and the generate + eval reserve; the students split the rest
PRESETS = ("tiny", "demo")


@dataclass(frozen=True)
class DemoConfig:
    """One demo run; the data size follows the preset."""

    minutes: float = 15.0  # wall-clock budget of the whole run; training gets what the other stages leave
    preset: str = "demo"  # model preset: tiny (tests, seconds) or demo (CPU, minutes)
    seed: int = 0  # seeds the data, the training and the noise
    probe_steps: int = 3  # training steps timed before the budget is set
    min_steps: int = 5  # the teacher trains at least this many steps, whatever the budget
    max_steps: int = 5000  # and at most this many
    batch_size: int = 2  # clip windows per training step
    eval_clips: int = 1  # held-out clips generated and evaluated per mode (a 3-s teacher video costs minutes)
    generate_steps: int | None = None  # DDIM steps of the teacher (None = its default, 25 → NFE 75)
    distill_lr: float = 1e-4  # AdamW learning rate of both students (short runs: larger than distill's default)
    distill_probe_steps: int = 2  # distillation steps timed per student before its budget is set
    distill_solver_steps: int = 5  # teacher DDIM steps per PeRFlow window (distill's default 10 costs twice as much)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            choices = ", ".join(PRESETS)
            raise UsageError(f"--preset {self.preset!r} is not valid for the CPU demo; use one of {choices}.")
        if not (math.isfinite(self.minutes) and self.minutes >= 1):
            raise UsageError(f"--minutes {self.minutes} is not valid; use 1 or more (15 runs the default demo).")

    def data_config(self) -> DemoDataConfig:
        """The demo dataset: bigger for the demo preset, just enough for tiny."""
        if self.preset == "tiny":
            return DemoDataConfig(clips=8, identities=2, size=64, seconds=2.2, seed=self.seed, clean_fraction=0.5)
        return DemoDataConfig(clips=24, identities=4, size=128, seconds=3.0, seed=self.seed, clean_fraction=0.5)


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
    """(overhead s, s per sampler step) of one held-out video, from generating it with 1 and 2 steps."""
    seconds = [
        generate_set(
            checkpoint, [clip], work / f"steps{n}", GenerateConfig(steps=n, crop=False), device, "fp32", quiet=True
        )[0].seconds  # fmt: skip
        for n in (1, 2)
    ]
    per_step = max(seconds[1] - seconds[0], 0.0)
    log(f"generation probe: {seconds[0]:.1f} s at 1 step, {seconds[1]:.1f} s at 2 steps", quiet=quiet)
    return max(seconds[0] - per_step, 0.0), per_step


def distill_student(out: Path, teacher: Path, mode: str, share_s: float, config: DemoConfig, device,
                    quiet: bool) -> tuple[Path, dict]:  # fmt: skip
    """Distil ``mode`` from ``teacher`` into ``out/students/<mode>``: probe steps, then resume up to ``share_s``."""
    student = out / "students" / mode
    probe_steps = config.distill_probe_steps
    distill_config = DistillConfig(mode=mode, steps=probe_steps, batch_size=config.batch_size, lr=config.distill_lr,
                                   solver_steps=config.distill_solver_steps, seed=config.seed,
                                   checkpoint_every=10**6)  # fmt: skip
    manifest = out / "curated" / "distill.parquet"
    probe = distill(teacher, manifest, student, distill_config, device, quiet=quiet)
    step_s = probe.seconds / probe.steps_this_run
    steps = min(config.max_steps, probe_steps + plan_training_steps(share_s, probe.seconds, step_s, 0.0, 0, 10**9))
    log(f"distill {mode}: {step_s:.2f} s/step → {steps} steps", quiet=quiet)
    result = probe
    if steps > probe_steps:
        result = distill(teacher, manifest, student, replace(distill_config, steps=steps), device, resume=True,
                         quiet=quiet)  # fmt: skip
    summary = {"steps": result.steps, "seconds_per_step": step_s, "final_loss": result.final_loss,
               "final_loss_distill": result.final_loss_distill, "final_loss_gt": result.final_loss_gt}  # fmt: skip
    return student, summary


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UsageError(f"--out {out} exists and is not a previous `fada demo` folder; name a new or empty folder.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def split_held_out(curated: pd.DataFrame, truth: pd.DataFrame, held_out: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows: other identities; held-out rows: the held-out identity's tier A/B clips)."""
    identity_of = dict(zip(truth["clip_id"], truth["identity"], strict=True))
    identity = curated["source"].map(lambda source: identity_of.get(Path(source).stem, ""))
    held = curated[(identity == held_out) & curated["tier"].isin(["A", "B"])]
    return curated[identity != held_out], held.sort_values("tier")  # tier A first


def run_demo(out: Path, config: DemoConfig = DemoConfig(), device: str = "cpu", quiet: bool = False) -> dict:
    """Run the lifecycle into ``out``; returns (and writes) the summary."""
    started, timings = time.perf_counter(), {}
    budget_s = 60.0 * config.minutes
    out = Path(out)
    torch_device = resolve_device(device)
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"config": asdict(config)}, indent=2) + "\n")

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    # 1. demo-data
    t = time.perf_counter()
    data_config = config.data_config()
    truth = generate_demo_data(out / "data", data_config, quiet=quiet)
    t = lap("demo_data", t)

    # 2. curate, then hold one identity out of training
    model_config = get_preset(config.preset)
    curate_config = CurateConfig(size=data_config.size, scoring=ScoringSettings(iqa_metric=None))
    summary = run_curate([out / "data" / "clips"], out / "curated", curate_config, quiet=quiet)
    curated = pd.read_parquet(summary.manifest)
    held_identity = f"id{data_config.identities - 1}"
    train_rows, held_rows = split_held_out(curated, truth, held_identity)
    if not (train_rows["tier"] == "A").any() or held_rows.empty:
        raise UsageError(
            f"curate gave {int((train_rows['tier'] == 'A').sum())} tier-A training clips and {len(held_rows)} "
            f"held-out clips of {held_identity}; rerun with another --seed."
        )
    held_rows = held_rows.head(config.eval_clips)
    write_manifest(train_rows, out / "curated" / "train.parquet", "fada demo", {"held_out_identity": held_identity})
    distill_rows = train_rows[train_rows["tier"].isin(["A", "B"])]  # tier B holds tier A
    write_manifest(distill_rows, out / "curated" / "distill.parquet", "fada demo", {"held_out_identity": held_identity})
    write_manifest(held_rows, out / "curated" / "held_out.parquet", "fada demo", {"held_out_identity": held_identity})
    portrait = out / "data" / "identities" / f"{held_identity}.png"
    clips = [HeldOutClip(Path(p).stem, portrait, clip_path(out / "curated" / "held_out.parquet", p))
             for p in held_rows["video_path"]]  # fmt: skip
    t = lap("curate", t)

    # 3. train-teacher: time a few probe steps, then resume up to what the budget pays for
    teacher = out / "teacher"
    train_config = TrainConfig(steps=config.probe_steps, batch_size=config.batch_size, seed=config.seed)
    probe = train_teacher(out / "curated" / "train.parquet", teacher, model_config, train_config, torch_device,
                          quiet=quiet)  # fmt: skip
    step_s = probe.seconds / probe.steps_this_run
    gen_overhead_s, gen_step_s = time_generation(teacher, clips[0], out / "probe", torch_device, quiet)
    per_frame_s = timings["curate"] / max(1, int(curated["n_frames"].sum()))  # curate's cost per frame
    # every mode's videos are paid for at the cost of a 3-branch step: teacher steps, then 6 + 6 student steps
    sampler_steps = (config.generate_steps or 25) + 2 * 6
    reserve_s = len(clips) * (3 * gen_overhead_s + sampler_steps * gen_step_s)  # generate, every mode
    reserve_s += 6 * per_frame_s * int(held_rows["n_frames"].sum())  # eval reads generated + reference, per mode
    left_s = budget_s - (time.perf_counter() - started) - reserve_s
    steps = config.probe_steps + plan_training_steps(TEACHER_SHARE * left_s, 0.0, step_s, 0.0, 0, config.max_steps)
    steps = min(config.max_steps, max(config.min_steps, config.probe_steps + 1, steps))
    log(f"budget: {step_s:.2f} s/step, {reserve_s:.0f} s kept for generate + eval → {steps} steps", quiet=quiet)
    result = train_teacher(out / "curated" / "train.parquet", teacher, model_config,
                           replace(train_config, steps=steps), torch_device, resume=True, quiet=quiet)  # fmt: skip
    t = lap("train_teacher", t)

    # 4. distill both students from the trained teacher, each on its share of what is left
    checkpoints = {"teacher": teacher}
    students = {}
    for i, mode in enumerate(STUDENT_MODES):
        share_s = (budget_s - (time.perf_counter() - started) - reserve_s) / (len(STUDENT_MODES) - i)
        checkpoints[mode], students[mode] = distill_student(out, teacher, mode, share_s, config, torch_device, quiet)
    t = lap("distill", t)

    # 5.–6. generate the held-out clips per mode, evaluate against them
    modes = {}
    for mode, checkpoint in checkpoints.items():
        steps = config.generate_steps if mode == "teacher" else None  # students: their own 6 steps
        gen_config = GenerateConfig(steps=steps, seed=config.seed, crop=False)
        stats = generate_set(checkpoint, clips, out / "generated" / mode, gen_config, torch_device, "fp32", quiet)
        report = evaluate(out / "generated" / mode, out / "curated" / "held_out.parquet", out / "eval" / mode,
                          EvalConfig(iqa_metric=None), quiet=quiet)  # fmt: skip
        values = metric_values(report)
        modes[mode] = {
            "checkpoint": str(checkpoint),
            "nfe": stats[0].nfe,
            "seconds_per_video_second": float(np.mean([s.seconds_per_video_second for s in stats])),
            **{name: values.get(name) for name in ("sync_proxy", "e_fid_proxy", "iqa_proxy")},
            "notes": {m.name: m.note for m in report.metrics if m.status == "insufficient"},
            "videos": [s.video for s in stats],
        }
    t = lap("generate_eval", t)
    for row in modes.values():
        row["speed_up"] = modes["teacher"]["seconds_per_video_second"] / row["seconds_per_video_second"]

    # 7. contact sheet and summary
    reference_frames, _ = read_video(clips[0].audio)  # the held-out clip itself (its audio drove the video)
    sheet_rows = {"held-out clip": reference_frames}
    sheet_rows |= {mode: read_video(Path(row["videos"][0]))[0] for mode, row in modes.items()}
    portrait_rgb = np.asarray(Image.open(portrait).convert("RGB"))
    sheet = out / "contact_sheet.png"
    Image.fromarray(contact_sheet(portrait_rgb, sheet_rows)).save(sheet)
    summary_payload = {
        "out": str(out),
        "config": asdict(config),
        "model_preset": config.preset,
        "held_out_identity": held_identity,
        "tiers": summary.tiers,
        "teacher": {
            "checkpoint": str(teacher),
            "steps": result.steps,
            "final_loss": result.final_loss,
            "seconds_per_step": step_s,
        },  # fmt: skip
        "students": students,
        "modes": modes,
        "contact_sheet": str(sheet),
        "timings_s": timings,
        "budget_s": budget_s,
        "total_s": round(time.perf_counter() - started, 2),
    }
    (out / SUMMARY).write_text(json.dumps(summary_payload, indent=2, default=str) + "\n")
    return summary_payload
