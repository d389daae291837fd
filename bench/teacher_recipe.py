"""Teacher recipes on the demo data: how fast each one learns to draw the held-out face.

Every variant trains a demo-preset teacher from scratch on the same demo data (`fada demo`'s:
24 clips, 5 identities, the last held out; seed 0) with one CPU thread, for the same budget of
CPU minutes (process time of the training calls), and is measured every ``--eval-every`` CPU
minutes on the held-out identity:

- ``x0_961`` / ``x0_701`` / ``x0_401``: MSE of the model's x̂0 = (z_t − √(1−ᾱ)·ε̂)/√ᾱ against the
  clean window at t = 961, 701, 401 (fixed held-out windows and noise; pixel space in [−1, 1]),
  next to ``copy_reference``, the MSE of simply copying the reference frame;
- ``face_rate``: the share of frames of a 1-s teacher video (held-out portrait, held-out speech,
  10 DDIM steps) in which mediapipe's face detector finds a face, frames upscaled to 256 px first
  (the real held-out clip is the ceiling, measured once).

At the end of each variant: ``r_speech`` / ``r_silence``, the mouth-darkness vs speech-energy
Pearson r (fixed mouth window, `mouth_region_evidence.py`) of 3-s teacher videos driven by the
held-out speech and by silence. Two-stage variants spend ``image_share`` of the budget in the
image stage (curve points there are of the image-stage teacher, which generates with reference
guidance only) and the rest in the video stage started from it.

    python bench/teacher_recipe.py --work /tmp/recipe --minutes 9 --jobs 2
    python bench/teacher_recipe.py --work /tmp/recipe --report   # table + curves into bench/results/

Writes ``<work>/<variant>/curve.jsonl`` while it runs (a variant already finished is skipped on
a rerun), then ``bench/results/teacher_recipe.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
T_EVAL = (961, 701, 401)
EVAL_WINDOWS = 4
FACE_SIZE = 256  # frames are upscaled to this side before face detection
CURVE_SECONDS = 2.0  # speech of the curve video (face rate, identity, mouth r)
CURVE_STEPS = 10  # DDIM steps of the curve videos (the final r videos too)
GUIDANCE = {"cfg_audio": 6.5, "cfg_ref": 2.5}  # the teacher videos' CFG scales (--cfg-audio, --cfg-ref)
# the paper's model under every variant: the demo preset's own departures are off unless a variant names them
PAPER_MODEL = {"prediction_type": "epsilon", "audio_time_embedding": False, "reference_concat": False}


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    stages: tuple[str, ...] = ("joint",)  # joint | image, video
    image_share: float = 0.7  # two-stage: share of the budget in the image stage
    lr: float = 1e-3
    loss_weighting: str = "eps"
    batch_size: int = 2  # F-frame windows per step (joint, video)
    image_batch_size: int = 8  # single frames per step (image stage)
    video_trainable: str = "audio-temporal"
    model: dict = field(default_factory=dict)  # preset overrides
    minutes: float | None = None  # CPU minutes of training (None = --minutes)
    ema: float = 0.0  # EMA decay of the weights the checkpoints hold (0 = off)
    identity_augment: float = 0.0  # probability of `data.identity_transform` per training window
    motion_loss_weight: float = 0.0  # α of `training.motion_weights` (0 = plain loss)


VARIANTS = {
    v.name: v
    for v in (
        Variant("joint-eps-1e-4", "one joint stage, plain ε, lr 1e-4 (the demo before this change)", lr=1e-4),
        Variant("two-v", "image → video, v weighting, lr 1e-3", ("image", "video"), loss_weighting="v"),
        Variant("two-eps", "image → video, plain ε, lr 1e-3", ("image", "video")),
        Variant(
            "two-trunc", "image → video, truncated SNR, lr 1e-3", ("image", "video"), loss_weighting="truncated-snr"
        ),  # fmt: skip
        Variant("joint-v-1e-3", "one joint stage, v weighting, lr 1e-3", loss_weighting="v"),
        Variant("two-minsnr", "image → video, min-SNR-5, lr 1e-3", ("image", "video"), loss_weighting="min-snr"),
        Variant("two-v-3e-4", "image → video, v weighting, lr 3e-4", ("image", "video"), loss_weighting="v", lr=3e-4),
        Variant("two-v-long", "two-v for 27 CPU minutes", ("image", "video"), loss_weighting="v", minutes=27.0),
        Variant("two-v-ema", "two-v with EMA 0.995 of the weights", ("image", "video"), loss_weighting="v", ema=0.995),
        Variant(
            "two-v-b16",
            "image → video, v, lr 1e-3, 16 frames per image step",
            ("image", "video"),
            loss_weighting="v",
            image_batch_size=16,
        ),  # fmt: skip
        Variant(
            "two-v-all",
            "image → video, v, lr 1e-3, video stage trains everything",
            ("image", "video"),
            loss_weighting="v",
            video_trainable="all",
        ),  # fmt: skip
        # issue 19: levers for copying the reference (ModelConfig options and the identity augmentation)
        Variant(
            "res-minsnr",
            "image → video, reference_residual, min-SNR-5, lr 1e-3",
            ("image", "video"),
            loss_weighting="min-snr",
            model={"prediction_type": "reference_residual"},
        ),  # fmt: skip
        Variant(
            "res-minsnr-aug",
            "res-minsnr + identity augmentation (p 0.8)",
            ("image", "video"),
            loss_weighting="min-snr",
            model={"prediction_type": "reference_residual"},
            identity_augment=0.8,
        ),  # fmt: skip
        Variant(
            "res-joint",
            "one joint stage, reference_residual, min-SNR-5, lr 1e-3",
            loss_weighting="min-snr",
            model={"prediction_type": "reference_residual"},
        ),  # fmt: skip
        Variant(
            "res-joint-aug",
            "res-joint + identity augmentation (p 0.8)",
            loss_weighting="min-snr",
            model={"prediction_type": "reference_residual"},
            identity_augment=0.8,
        ),  # fmt: skip
        Variant(
            "res-v",
            "image → video, reference_residual, v weighting, lr 1e-3",
            ("image", "video"),
            loss_weighting="v",
            model={"prediction_type": "reference_residual"},
        ),  # fmt: skip
        Variant(
            "res-short-image",
            "res-minsnr with 30 % of the time in the image stage, video stage trains everything",
            ("image", "video"),
            image_share=0.3,
            loss_weighting="min-snr",
            video_trainable="all",
            model={"prediction_type": "reference_residual"},
        ),  # fmt: skip
        Variant(
            "res-v-joint",
            "one joint stage, reference_residual, v weighting, lr 1e-3",
            loss_weighting="v",
            model={"prediction_type": "reference_residual"},
        ),  # fmt: skip
        Variant(
            "res-v-motion",
            "res-v-joint + motion-weighted loss (α 4)",
            loss_weighting="v",
            model={"prediction_type": "reference_residual"},
            motion_loss_weight=4.0,
        ),  # fmt: skip
        Variant(
            "res-v-motion-aug",
            "res-v-motion + identity augmentation (p 0.8)",
            loss_weighting="v",
            model={"prediction_type": "reference_residual"},
            motion_loss_weight=4.0,
            identity_augment=0.8,
        ),  # fmt: skip
        Variant(
            "res-v-audiotime",
            "res-v-joint + the audio added to the timestep embedding",
            loss_weighting="v",
            model={"prediction_type": "reference_residual", "audio_time_embedding": True},
        ),  # fmt: skip
        Variant(
            "res-v-audiotime-motion",
            "res-v-audiotime + motion-weighted loss (α 4)",
            loss_weighting="v",
            model={"prediction_type": "reference_residual", "audio_time_embedding": True},
            motion_loss_weight=4.0,
        ),  # fmt: skip
        Variant(
            "res-v-motion-3e-4",
            "res-v-motion at lr 3e-4",
            loss_weighting="v",
            lr=3e-4,
            model={"prediction_type": "reference_residual"},
            motion_loss_weight=4.0,
        ),  # fmt: skip
        Variant(
            "res-v-at-motion-3e-4",
            "res-v-motion-3e-4 + the audio added to the timestep embedding",
            loss_weighting="v",
            lr=3e-4,
            model={"prediction_type": "reference_residual", "audio_time_embedding": True},
            motion_loss_weight=4.0,
        ),  # fmt: skip
        Variant(
            "res-v-motion-a2-5e-4",
            "res-v-motion with α 2 at lr 5e-4",
            loss_weighting="v",
            lr=5e-4,
            model={"prediction_type": "reference_residual"},
            motion_loss_weight=2.0,
        ),  # fmt: skip
        Variant(
            "res-v-motion-3e-4-aug",
            "res-v-motion-3e-4 + identity augmentation (p 0.8)",
            loss_weighting="v",
            lr=3e-4,
            model={"prediction_type": "reference_residual"},
            motion_loss_weight=4.0,
            identity_augment=0.8,
        ),  # fmt: skip
        Variant(
            "res-v-at-motion-a1-3e-4",
            "res-v-at-motion-3e-4 with α 1",
            loss_weighting="v",
            lr=3e-4,
            model={"prediction_type": "reference_residual", "audio_time_embedding": True},
            motion_loss_weight=1.0,
        ),  # fmt: skip
        Variant(
            "res-v-at-motion-a2-3e-4",
            "res-v-at-motion-3e-4 with α 2",
            loss_weighting="v",
            lr=3e-4,
            model={"prediction_type": "reference_residual", "audio_time_embedding": True},
            motion_loss_weight=2.0,
        ),  # fmt: skip
        Variant(
            "res-v-at-motion-a2-3e-4-aug",
            "res-v-at-motion-a2-3e-4 + identity augmentation (p 0.8)",
            loss_weighting="v",
            lr=3e-4,
            model={"prediction_type": "reference_residual", "audio_time_embedding": True},
            motion_loss_weight=2.0,
            identity_augment=0.8,
        ),  # fmt: skip
        Variant(
            "res-v-at-motion-a2-3e-4-attn32",
            "res-v-at-motion-a2-3e-4 with reference, audio and temporal attention at the 32×32 level too",
            loss_weighting="v",
            lr=3e-4,
            model={
                "prediction_type": "reference_residual",
                "audio_time_embedding": True,
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            },
            motion_loss_weight=2.0,
        ),  # fmt: skip
        Variant(
            "concat-v",
            "image → video, v weighting, lr 1e-3, reference concatenated to the input",
            ("image", "video"),
            loss_weighting="v",
            model={"reference_concat": True},
        ),  # fmt: skip
        Variant(
            "two-v-aug",
            "two-v + identity augmentation (p 0.8)",
            ("image", "video"),
            loss_weighting="v",
            identity_augment=0.8,
        ),  # fmt: skip
    )
}


# --------------------------------------------------------------------------------------------
# data


def prepare(work: Path) -> dict:
    """The demo's data, curated and split, once (``work/data.json`` says where)."""
    done = work / "data.json"
    if done.is_file():
        return json.loads(done.read_text())
    from pipelines.demo import DemoConfig, curate_and_split, make_data

    config = DemoConfig(eval_clips=2)
    truth = make_data(work, config, quiet=True)
    split = curate_and_split(work, config, truth, quiet=True)
    from pipelines.media import read_video

    real, _ = read_video(split.clips[0].audio)
    info = {
        "train": str(split.train),
        "held_out": str(split.held_out),
        "portrait": str(split.portrait),
        "speech": str(split.clips[0].audio),
        "held_identity": split.held_identity,
        "tiers": split.tiers,
        "real_face_rate": face_rate(real),
        **identity_anchors(split.portrait, real),
    }
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info


def face_rate(frames) -> float:
    """Share of frames (T, H, W, 3) uint8 where mediapipe finds a face after upscaling to FACE_SIZE."""
    from pipelines.faces import face_found_rate

    return face_found_rate(frames, FACE_SIZE)


def model_portrait(portrait: str | Path, size: int = 64):
    """The portrait as the demo's `fada generate --no-crop` feeds it to the model: centre square, size²."""
    import numpy as np
    from PIL import Image

    from pipelines.generate import crop_portrait

    return crop_portrait(np.asarray(Image.open(portrait).convert("RGB")), size, False, 1.0, Path(portrait))


def identity_anchors(portrait: Path, real) -> dict[str, float]:
    """The identity measure's ceiling (the real held-out clip against its portrait) and floor (the nearest
    training identity's portrait against it), at the demo preset's 64 px."""
    import cv2
    import numpy as np

    from pipelines.metrics.identity import identity_scores

    target = model_portrait(portrait)
    real = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in real])
    ceiling = identity_scores(real, target)
    others = sorted(p for p in Path(portrait).parent.glob("*.png") if p != Path(portrait))
    floors = [identity_scores(model_portrait(p)[None], target) for p in others]
    return {
        "identity_ceiling": ceiling["identity_psnr16"],
        "identity_floor": max(f["identity_psnr16"] for f in floors),  # the nearest wrong face
        "colour_de_ceiling": ceiling["identity_colour_de"],
        "colour_de_floor": min(f["identity_colour_de"] for f in floors),
    }


def trimmed_speech(source: str, seconds: float, out: Path, silent: bool = False, reverse: bool = False) -> Path:
    """The first ``seconds`` of ``source``'s audio (or silence as long, or the same reversed in time) as a wav."""
    import numpy as np
    import soundfile as sf

    from pipelines.media import AUDIO_SR, read_audio

    if not out.is_file():
        audio = read_audio(Path(source))[: int(seconds * AUDIO_SR)]
        sf.write(out, np.zeros_like(audio) if silent else audio[::-1] if reverse else audio, AUDIO_SR)
    return out


def identity_of(frames, data: dict) -> dict[str, float]:
    from pipelines.metrics.identity import fraction_of_range, identity_scores

    scores = identity_scores(frames, model_portrait(data["portrait"], frames.shape[1]))
    scores["identity_fraction"] = fraction_of_range(
        scores["identity_psnr16"], data["identity_floor"], data["identity_ceiling"]
    )
    return scores


# --------------------------------------------------------------------------------------------
# one variant (a subprocess with one thread)


def x0_errors(checkpoint: Path, data: dict) -> dict[str, float]:
    """x0-MSE at T_EVAL on fixed held-out windows, and the MSE of copying the reference."""
    import torch

    from pipelines.checkpoint import load_checkpoint_info
    from pipelines.data import WindowDataset
    from pipelines.model import FadaModel
    from pipelines.schedulers import sd15_alphas_cumprod

    info = load_checkpoint_info(checkpoint, expect_stage="teacher")
    model = FadaModel.from_checkpoint(checkpoint, expect_stage="teacher").eval()
    dataset = WindowDataset(data["held_out"], model.config, ("A", "B"))
    batch = dataset.batch([(i % len(dataset), 1000 + i) for i in range(EVAL_WINDOWS)])
    alphas = sd15_alphas_cumprod(torch.float32)
    g = torch.Generator().manual_seed(0)
    errors = {}
    with torch.no_grad():
        z0 = model.encode_images(batch["frames"])
        reference = model.encode_images(batch["reference"])
        motion = None if info.image_only else model.encode_images(batch["motion"])
        b = z0.shape[0]
        keep = torch.zeros(b, dtype=torch.bool)
        drop_audio = torch.ones(b, dtype=torch.bool) if info.image_only else keep
        for t in T_EVAL:
            eps = torch.randn(z0.shape, generator=g)
            a = alphas[t]
            noisy = a.sqrt() * z0 + (1 - a).sqrt() * eps
            pred = model(noisy, torch.full((b,), float(t)), reference, motion, batch["audio_features"], drop_audio,
                         keep)  # fmt: skip
            x0 = (noisy - (1 - a).sqrt() * pred) / a.sqrt()
            errors[f"x0_{t}"] = float((x0 - z0).pow(2).mean())
        errors["copy_reference"] = float((reference[:, None] - z0).pow(2).mean())
    return errors


def teacher_video(checkpoint: Path, data: dict, speech: Path, out: Path):
    from pipelines.generate import GenerateConfig
    from pipelines.media import read_video
    from pipelines.pipeline import generate

    generate(checkpoint, data["portrait"], speech, out, GenerateConfig(steps=CURVE_STEPS, crop=False, **GUIDANCE),
             "cpu", "fp32", quiet=True)  # fmt: skip
    return read_video(out)[0]


def evaluate_point(checkpoint: Path, data: dict, work: Path, tag: str) -> dict:
    speech = trimmed_speech(data["speech"], CURVE_SECONDS, work.parent / f"speech_{CURVE_SECONDS:g}s.wav")
    frames = teacher_video(checkpoint, data, speech, work / f"face_{tag}.mp4")
    return {**x0_errors(checkpoint, data), "face_rate": face_rate(frames), **identity_of(frames, data),
            "r_speech": mouth_darkness_r(frames, speech, data)}  # fmt: skip


def mouth_darkness_r(frames, speech: Path, data: dict) -> float:
    """Mouth darkness (a fixed window from the portrait) vs the speech's RMS per frame, Pearson r at lag 0."""
    import numpy as np
    from mouth_region_evidence import darkness_vs_speech, mouth_window
    from PIL import Image

    from pipelines.generate import crop_portrait
    from pipelines.media import read_audio

    portrait = np.asarray(Image.open(data["portrait"]).convert("RGB"))
    centre, eye = mouth_window(crop_portrait(portrait, frames.shape[1], False, 1.0, Path(data["portrait"])))
    return darkness_vs_speech(frames, read_audio(speech), centre, eye)["r_darkness_lag0"]


def mouth_r(checkpoint: Path, data: dict, work: Path) -> dict:
    """r of mouth darkness vs speech RMS for 3-s videos driven by the held-out speech, by silence and by the
    speech reversed in time; the face rate and identity of the speech-driven one."""
    speech = trimmed_speech(data["speech"], 3.0, work.parent / "speech_3s.wav")
    silence = trimmed_speech(data["speech"], 3.0, work.parent / "silence_3s.wav", silent=True)
    reversed_speech = trimmed_speech(data["speech"], 3.0, work.parent / "reversed_3s.wav", reverse=True)
    driven = teacher_video(checkpoint, data, speech, work / "speech_driven.mp4")
    silent = teacher_video(checkpoint, data, silence, work / "silence_driven.mp4")
    reverse = teacher_video(checkpoint, data, reversed_speech, work / "reversed_driven.mp4")
    identity = identity_of(driven, data)
    return {  # each r against the forward speech
        "r_speech": mouth_darkness_r(driven, speech, data),
        "r_silence": mouth_darkness_r(silent, speech, data),
        "r_reversed": mouth_darkness_r(reverse, speech, data),
        "face_rate_3s": face_rate(driven),
        "identity_psnr16_3s": identity["identity_psnr16"],
        "identity_fraction_3s": identity["identity_fraction"],
        "colour_de_3s": identity["identity_colour_de"],
    }


def run_variant(variant: Variant, work: Path, data: dict, minutes: float, eval_every: float) -> None:
    import torch

    from pipelines.train_teacher import TeacherStage
    from pipelines.training import fit

    torch.set_num_threads(1)
    folder = work / variant.name
    folder.mkdir(parents=True, exist_ok=True)
    curve = folder / "curve.jsonl"
    curve.unlink(missing_ok=True)
    budget = 60.0 * (variant.minutes or minutes)
    shares = (variant.image_share, 1 - variant.image_share) if len(variant.stages) == 2 else (1.0,)
    spent, previous = 0.0, None

    def record(point: dict) -> None:
        with curve.open("a") as handle:
            handle.write(json.dumps(point) + "\n")

    for stage, share in zip(variant.stages, shares, strict=True):
        out = folder / stage
        batch = variant.image_batch_size if stage == "image" else variant.batch_size
        options = dict(stage=stage, lr=variant.lr, loss_weighting=variant.loss_weighting, batch_size=batch,
                       video_trainable=variant.video_trainable, seed=0, ema=variant.ema, checkpoint_every=10**6,
                       identity_augment=variant.identity_augment,
                       motion_loss_weight=variant.motion_loss_weight)  # fmt: skip
        stage_end = spent + share * budget
        steps, chunk, resume = 3, 3, False
        while spent < stage_end - 1.0:
            began = time.process_time()
            fit(TeacherStage(), data["train"], out, preset="demo", overrides=options | {"steps": steps},
                model_overrides=PAPER_MODEL | variant.model, resume=resume,
                init_from=None if resume else previous, device="cpu", quiet=True)  # fmt: skip
            used = time.process_time() - began
            step_s = used / chunk
            spent += used
            point = {"stage": stage, "steps": steps, "cpu_minutes": spent / 60, "seconds_per_step": step_s}
            record(point | evaluate_point(out, data, folder, f"{stage}{steps}"))
            chunk = int(min(eval_every * 60, stage_end - spent) / step_s)
            if chunk < 5:  # a few steps short of the stage's end: not worth a curve point
                break
            steps, resume = steps + chunk, True
        previous = out
    record({"final": True, "cpu_minutes": spent / 60, **GUIDANCE, **mouth_r(previous, data, folder)})


# --------------------------------------------------------------------------------------------
# report


def load_curves(work: Path) -> dict[str, list[dict]]:
    curves = {}
    for name in VARIANTS:
        path = work / name / "curve.jsonl"
        if path.is_file():
            curves[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return curves


def minutes_to_face(points: list[dict], threshold: float = 0.9) -> float | None:
    hits = [p["cpu_minutes"] for p in points if p.get("face_rate", 0.0) >= threshold]
    return min(hits) if hits else None


def report(work: Path, data: dict, results_name: str = "teacher_recipe") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = load_curves(work)
    rows = []
    panels = ("x0_961", "x0_401", "face_rate", "identity_fraction", "r_speech")
    fig, axes = plt.subplots(1, len(panels), figsize=(25, 4.5))
    for name, points in curves.items():
        trace = [p for p in points if not p.get("final")]
        final = next((p for p in points if p.get("final")), {})
        last = trace[-1] if trace else {}
        rows.append({
            "variant": name, "description": VARIANTS[name].description, "cpu_minutes": last.get("cpu_minutes"),
            "minutes_to_face": minutes_to_face(trace), "x0_961": last.get("x0_961"), "x0_401": last.get("x0_401"),
            "copy_reference": last.get("copy_reference"), "face_rate": last.get("face_rate"),
            "identity_fraction": last.get("identity_fraction"), "face_rate_3s": final.get("face_rate_3s"),
            "identity_fraction_3s": final.get("identity_fraction_3s"), "colour_de_3s": final.get("colour_de_3s"),
            "r_speech": final.get("r_speech"), "r_silence": final.get("r_silence"),
            "r_reversed": final.get("r_reversed"), "finished": bool(final),
        })  # fmt: skip
        x = [p["cpu_minutes"] for p in trace]
        for ax, key in zip(axes, panels, strict=True):
            ax.plot(x, [p.get(key, float("nan")) for p in trace], marker="o", label=name)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_xlabel("CPU minutes (1 thread)")
        ax.set_title(key + (" (held-out MSE ↓)" if key.startswith("x0") else " (held-out video ↑)"))
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].axhline(data["real_face_rate"], color="k", ls="--", lw=1, label="real clip")
    axes[3].axhline(1.0, color="k", ls="--", lw=1, label="real clip (ceiling)")
    axes[3].axhline(0.75, color="g", ls=":", lw=1, label="target")
    axes[4].axhline(0.5, color="g", ls=":", lw=1, label="target")
    axes[4].set_title("r_speech (mouth vs speech energy, 2-s video ↑)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / f"{results_name}.png", dpi=110)
    (RESULTS / f"{results_name}.json").write_text(json.dumps({"data": data, "rows": rows, "curves": curves},
                                                            indent=2) + "\n")  # fmt: skip

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    lines = [
        "# Teacher recipes on the demo data (`bench/teacher_recipe.py`)",
        "",
        f"Demo preset, demo data (held-out {data['held_identity']}), one CPU thread per variant, seed 0; teacher "
        f"videos: {CURVE_STEPS} DDIM steps at CFG audio {GUIDANCE['cfg_audio']:g} / reference "
        f"{GUIDANCE['cfg_ref']:g}. "
        f"Face rate of the real held-out clip: {data['real_face_rate']:.2f}. Minutes to a face: first curve "
        "point with face rate ≥ 0.9. Identity: `identity_psnr16` of the generated frames against the portrait "
        "as a fraction of the way from the floor (the nearest training identity's portrait, "
        f"{data['identity_floor']:.2f} dB) to the ceiling (the real held-out clip, {data['identity_ceiling']:.2f} dB); "
        "target ≥ 0.75. r: mouth darkness vs the speech's energy for 3-s videos driven by the speech, by silence "
        "and by the same speech reversed in time (each against the forward speech).",
        "",
        "| variant | what | CPU min | min to face | x0 t=961 | x0 t=401 | copy ref | face 1 s | identity 1 s | "
        "face 3 s | identity 3 s | ΔE 3 s | r speech | r silence | r reversed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['description']}{'' if r['finished'] else ' (stopped early)'}"
            f" | {fmt(r['cpu_minutes'], '.1f')}"
            f" | {fmt(r['minutes_to_face'], '.1f')}"
            f" | {fmt(r['x0_961'], '.4f')} | {fmt(r['x0_401'], '.4f')} | {fmt(r['copy_reference'], '.4f')}"
            f" | {fmt(r['face_rate'], '.2f')} | {fmt(r['identity_fraction'], '.2f')}"
            f" | {fmt(r['face_rate_3s'], '.2f')} | {fmt(r['identity_fraction_3s'], '.2f')}"
            f" | {fmt(r['colour_de_3s'], '.1f')} | {fmt(r['r_speech'], '.2f')}"
            f" | {fmt(r['r_silence'], '.2f')} | {fmt(r['r_reversed'], '.2f')} |"
        )
    (RESULTS / f"{results_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, checkpoints, curves)")
    parser.add_argument("--minutes", type=float, default=9.0, help="CPU minutes of training per variant")
    parser.add_argument("--eval-every", type=float, default=1.5, help="CPU minutes between curve points")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--jobs", type=int, default=2, help="variants run at once (one thread each)")
    parser.add_argument("--cfg-audio", type=float, default=GUIDANCE["cfg_audio"], help="teacher videos' audio CFG")
    parser.add_argument("--cfg-ref", type=float, default=GUIDANCE["cfg_ref"], help="teacher videos' reference CFG")
    parser.add_argument("--name", default="teacher_recipe", help="file name of the results in bench/results/")
    parser.add_argument("--run-variant", help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true", help="only write the table and curves")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    GUIDANCE.update(cfg_audio=args.cfg_audio, cfg_ref=args.cfg_ref)
    data = prepare(args.work)
    if args.run_variant:
        run_variant(VARIANTS[args.run_variant], args.work, data, args.minutes, args.eval_every)
        return
    if not args.report:
        names = [n for n in args.variants.split(",") if n]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        todo = [n for n in names if not any(p.get("final") for p in load_curves(args.work).get(n, []))]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        running: list[subprocess.Popen] = []
        for name in todo:
            while len(running) >= args.jobs:
                time.sleep(5)
                running = [p for p in running if p.poll() is None]
            command = [sys.executable, __file__, "--work", str(args.work), "--minutes", str(args.minutes),
                       "--eval-every", str(args.eval_every), "--cfg-audio", str(args.cfg_audio), "--cfg-ref",
                       str(args.cfg_ref), "--run-variant", name]  # fmt: skip
            log = (args.work / f"{name}.log").open("w")
            running.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            print(f"started {name}", flush=True)
        for process in running:
            process.wait()
    report(args.work, data, args.name)


if __name__ == "__main__":
    main()
