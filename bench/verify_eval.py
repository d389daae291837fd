"""Does `fada eval` measure what fada makes? The IQA ordering and the sync proxy on degraded demo clips.

Run on purpose (not a test)::

    python bench/verify_eval.py [--data DIR] [--out bench/results/verify_eval.md]

Makes the demo preset's dataset (24 clips, 5 identities, 128 px, 3 s; reused when ``--data``
already holds one), then:

1. IQA ordering: every 5th frame of each clip at 128 px (as rendered) and area-downsampled to
   64 px, scored at that size as it is (clean), Gaussian-blurred, with Gaussian noise, JPEG at
   quality 10, and pure uniform noise of the same size. A metric passes a clip when it rates the
   clean frames best of all and pure noise worst of all (clean < blurred, noisy < pure for a
   lower-is-better metric); blur against noise is not asked (which is "worse" is not a fact a
   metric must agree with). Target for `fada eval`'s ``iqa`` row (BRISQUE): >= 90 % of clips at
   128 and 64 px with blur σ 1.0 and noise σ 0.05 and 0.1. The same share for PIQE (pyiqa),
   Laplacian sharpness (higher = sharper; not an IQA), and, where the `brisque` PyPI package is
   importable, its BRISQUE (own model and features) with its rank correlation to fada's.
2. Sync proxy: each clip area-downsampled to 64 px, blurred and given Gaussian noise like
   generated frames, written to mp4 and read back (as `fada eval` reads videos); then
   `pipelines.metrics.proxies.sync_proxy` with the face mesh run on the degraded frames and the
   mouth found on the video's own stills (no portrait) — or, in the ``+ portrait`` rows, on the
   identity's portrait — against: its own speech (offset within ±1 frame of the truth?), another
   clip's speech (shuffled), and room-tone silence (noise at 1e-3 full scale). The score is
   `sync_proxy_conf` (best-lag r above chance); the raw best-lag r is shown beside it.

Writes the tables to ``--out`` and the figures to the JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pipelines.demo_data import MARKER_FILE, DemoDataConfig, generate_demo_data, render_clip
from pipelines.faces import FaceMeshTracker
from pipelines.media import AUDIO_SR, VIDEO_FPS, read_audio, read_video, write_video
from pipelines.metrics import mouth_window, proxies, quality
from pipelines.metrics.brisque import brisque

DATA = DemoDataConfig(clips=24, identities=5, size=128, seconds=3.0, seed=0, clean_fraction=0.5)  # demo preset
IQA_LEVELS = [(0.5, 0.05), (0.5, 0.1), (1.0, 0.05), (1.0, 0.1)]  # (blur sigma px, noise sigma in [0, 1])
IQA_SIZES = (128, 64)  # px: the demo clips as rendered, and area-downsampled like generated frames
IQA_TARGET = 0.9  # share of clips BRISQUE must order at blur σ 1.0 (the target)
JPEG_LEVEL = 10  # JPEG quality of the compressed version
SYNC_SIZE = 64  # generated frames' side
SYNC_LEVELS = [(0.0, 0.0), (1.0, 0.0), (0.0, 0.1), (0.5, 0.05), (1.0, 0.1)]  # (blur sigma at 64 px, noise sigma)
SHUFFLE_STEP = 7  # clip i is scored against clip (i + 7) mod N's speech: another identity, other timing
ROOM_TONE = 1e-3  # amplitude of the silence's noise (about -60 dBFS)


def degrade(frames: np.ndarray, size: int, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Area-downsample to size², Gaussian blur (sigma px), Gaussian noise (sigma in [0, 1]); uint8."""
    out = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.float32)
    if blur > 0:
        out = np.stack([cv2.GaussianBlur(f, (0, 0), blur) for f in out])
    if noise > 0:
        out = out + rng.normal(0, 255 * noise, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg(frames: np.ndarray, level: int = JPEG_LEVEL) -> np.ndarray:
    """Each frame JPEG-encoded at quality ``level`` and decoded."""
    encoded = (cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, level])[1] for f in frames)
    return np.stack([cv2.imdecode(e, cv2.IMREAD_UNCHANGED) for e in encoded])


def package_brisque():
    """The `brisque` PyPI package's scorer (frames → mean), or None where it is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from brisque import BRISQUE
    except ImportError:
        return None
    model = BRISQUE(url=False)

    def score(frames: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.mean([model.score(f) for f in frames]))

    return score


def iqa_metrics() -> dict[str, tuple]:
    """name → (frames → score, lower is better)."""
    metrics = {"brisque": (brisque, True), "piqe": (quality.weight_free_iqa, True),
               "sharpness": (quality.laplacian_sharpness, False)}  # fmt: skip
    package = package_brisque()
    if package is not None:
        metrics["brisque_pypi"] = (package, True)
    return metrics


def clean_renders(data: Path, truth: pd.DataFrame, work: Path) -> dict[str, np.ndarray]:
    """clip id → every 5th frame of the clip rendered again without the dataset's own defects (blur,
    noise, background flicker; same face, motion and mouth), through H.264 as the stored clips."""
    clips = {}
    for index, row in enumerate(truth.to_dict("records")):
        frames, audio = render_clip(DATA, index, {**row, "blur_sigma": 0.0, "noise_std": 0.0, "bg_flicker": 0.0})
        write_video(work / "clean.mp4", frames, audio=audio, crf=DATA.crf)
        clips[row["clip_id"]] = read_video(work / "clean.mp4")[0][:: quality.FRAME_STEP]
    return clips


def stored_clips(data: Path, truth: pd.DataFrame) -> dict[str, np.ndarray]:
    """clip id → every 5th frame of the demo clip as stored (half of them carry the dataset's defects)."""
    return {c: read_video(data / "clips" / f"{c}.mp4")[0][:: quality.FRAME_STEP] for c in truth["clip_id"]}


def iqa_rows(clips: dict[str, np.ndarray], rng: np.random.Generator, metrics: dict) -> list[dict]:
    """One row per (clip, size, blur, noise): every metric's score of each version and whether it ordered them."""
    rows = []
    for clip_id, frames in clips.items():
        for size in IQA_SIZES:
            clean = degrade(frames, size, 0.0, 0.0, rng)
            versions = {"clean": clean, "pure": rng.integers(0, 256, clean.shape, dtype=np.uint8), "jpeg": jpeg(clean)}
            versions |= {f"blur{b}": degrade(clean, size, b, 0.0, rng) for b in sorted({b for b, _ in IQA_LEVELS})}
            versions |= {f"noise{n}": degrade(clean, size, 0.0, n, rng) for n in sorted({n for _, n in IQA_LEVELS})}
            scores = {(m, v): fn(images) for m, (fn, _) in metrics.items() for v, images in versions.items()}
            for blur, noise in IQA_LEVELS:
                row = {"clip_id": clip_id, "size": size, "blur": blur, "noise": noise}
                for m, (_, lower_better) in metrics.items():
                    sign = 1.0 if lower_better else -1.0  # compare as "lower is better"
                    v = {k: sign * scores[(m, name)] for k, name in (("clean", "clean"), ("blurred", f"blur{blur}"),
                         ("noisy", f"noise{noise}"), ("jpeg", "jpeg"), ("pure", "pure"))}  # fmt: skip
                    row |= {f"{m}_{k}": sign * x for k, x in v.items()}
                    row[f"{m}_ordered"] = bool(v["clean"] < min(v["blurred"], v["noisy"]) and
                                               max(v["blurred"], v["noisy"]) < v["pure"])  # fmt: skip
                    row[f"{m}_ordered_jpeg"] = bool(row[f"{m}_ordered"] and v["clean"] < v["jpeg"] < v["pure"])
                rows.append(row)
    return rows


def sync_rows(data: Path, truth: pd.DataFrame, rng: np.random.Generator, work: Path) -> list[dict]:
    speech = {c: read_audio(data / "clips" / f"{c}.mp4") for c in truth["clip_id"]}
    silence = (ROOM_TONE * rng.standard_normal(len(next(iter(speech.values()))))).astype(np.float32)
    ids = list(truth["clip_id"])
    rows = []
    levels = [(*level, False) for level in SYNC_LEVELS] + [(*SYNC_LEVELS[-1], True)]
    for blur, noise, with_portrait in levels:
        for i, clip in enumerate(truth.itertuples()):
            frames = degrade(read_video(data / "clips" / f"{clip.clip_id}.mp4")[0], SYNC_SIZE, blur, noise, rng)
            path = work / f"{clip.clip_id}.mp4"
            write_video(path, frames, audio=speech[clip.clip_id])  # H.264 round trip, as generated videos
            frames = read_video(path)[0]
            with FaceMeshTracker() as tracker:
                landmarks = [tracker.landmarks(f) for f in frames]
            portrait = None
            if with_portrait:
                portrait = np.asarray(Image.open(data / "identities" / f"{clip.identity}.png").convert("RGB"))
            anchor = mouth_window.locate_mouth(frames, portrait)
            audios = {"speech": speech[clip.clip_id], "shuffled": speech[ids[(i + SHUFFLE_STEP) % len(ids)]],
                      "silence": silence}  # fmt: skip
            row = {"clip_id": clip.clip_id, "blur": blur, "noise": noise, "portrait": with_portrait,
                   "offset_true": clip.offset_frames, "clean": bool(clip.clean),
                   "mesh_frames": sum(p is not None for p in landmarks),
                   "mouth_found_by": anchor.source if anchor is not None else ""}  # fmt: skip
            for name, audio in audios.items():
                scores = proxies.sync_proxy(frames, audio, VIDEO_FPS, AUDIO_SR, landmarks, anchor)
                row[f"route_{name}"] = scores["sync_proxy_route"]
                row[f"offset_{name}"], row[f"r_{name}"] = scores["sync_proxy_offset"], scores["sync_proxy_r"]
                row[f"conf_{name}"] = scores["sync_proxy_conf"]
            rows.append(row)
    return rows


IQA_NAMES = {"brisque": "BRISQUE (fada `iqa`)", "piqe": "PIQE", "sharpness": "sharpness",
             "brisque_pypi": "`brisque` 0.2.0 (PyPI)"}  # fmt: skip


def iqa_table(
    df: pd.DataFrame, metrics: list[str], target: bool = True, clean_ids: set[str] | None = None
) -> list[str]:
    """Share of clips each metric orders (clean best, pure noise worst), per size and degradation level;
    with ``clean_ids``, also BRISQUE's share over those clips alone."""
    names = [IQA_NAMES[m] for m in metrics] + (["BRISQUE, clean-tier clips"] if clean_ids else [])
    names += ["BRISQUE target"] if target else []
    lines = ["| size | blur σ (px) | noise σ | " + " | ".join(names) + " | BRISQUE, JPEG 10 too | "
             "mean BRISQUE clean / blurred / noisy / JPEG / pure |",
             "|---|---|---|" + "---|" * len(names) + "---|---|"]  # fmt: skip
    for (size, blur, noise), g in df.groupby(["size", "blur", "noise"], sort=False):
        shares = " | ".join(f"{g[f'{m}_ordered'].mean():.0%}" for m in metrics)
        if clean_ids:
            shares += f" | {g.loc[g['clip_id'].isin(clean_ids), 'brisque_ordered'].mean():.0%}"
        if target:
            shares += " | " + (("met" if g["brisque_ordered"].mean() >= IQA_TARGET else "**missed**")
                               if blur == 1.0 else "—")  # fmt: skip
        means = " / ".join(f"{g[f'brisque_{k}'].mean():.1f}" for k in ("clean", "blurred", "noisy", "jpeg", "pure"))
        lines.append(f"| {size} | {blur} | {noise} | {shares} | {g['brisque_ordered_jpeg'].mean():.0%} | {means} |")
    return lines


def agreement_lines(df: pd.DataFrame) -> list[str]:
    """Spearman rank correlation of fada's BRISQUE with the `brisque` package over every scored version."""
    if "brisque_pypi_clean" not in df:
        return ["The `brisque` PyPI package was not importable: no comparison with it in this run."]
    lines = ["| size | versions scored | Spearman ρ (fada BRISQUE, `brisque` package) |", "|---|---|---|"]
    kinds = ("clean", "blurred", "noisy", "jpeg", "pure")
    for size, g in df.groupby("size", sort=False):
        ours = pd.concat([g[f"brisque_{k}"] for k in kinds], ignore_index=True)
        theirs = pd.concat([g[f"brisque_pypi_{k}"] for k in kinds], ignore_index=True)
        lines.append(f"| {size} | {len(ours)} | {ours.corr(theirs, method='spearman'):.3f} |")
    return lines


def sync_table(df: pd.DataFrame) -> list[str]:
    lines = ["| blur σ (64 px) | noise σ | mouth from | mesh read ≥ half | window route | offset ±1 | "
             "conf speech | conf shuffled < 0.2 (max) | conf silence < 0.2 (max) | r speech / shuffled / silence |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (blur, noise, portrait), g in df.groupby(["blur", "noise", "portrait"], sort=False):
        within = ((g["offset_speech"] - g["offset_true"]).abs() <= 1).mean()
        mesh = (g["mesh_frames"] >= 75 // 2).mean()
        window = (g["route_speech"] == proxies.WINDOW_ROUTE).mean()
        r = " / ".join(f"{g[f'r_{k}'].mean():.2f}" for k in ("speech", "shuffled", "silence"))
        null = {k: f"{(g[f'conf_{k}'] < 0.2).mean():.0%} ({g[f'conf_{k}'].max():.2f})"
                for k in ("shuffled", "silence")}  # fmt: skip
        source = "portrait" if portrait else "own stills"
        lines.append(f"| {blur} | {noise} | {source} | {mesh:.0%} | {window:.0%} | {within:.0%} | "
                     f"{g['conf_speech'].mean():.2f} | {null['shuffled']} | {null['silence']} | {r} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "fada_verify_eval_data")
    parser.add_argument("--out", type=Path, default=Path("bench/results/verify_eval.md"))
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if not (args.data / MARKER_FILE).is_file():
        generate_demo_data(args.data, DATA, quiet=True)
    truth = pd.read_parquet(args.data / "truth.parquet")
    metrics = iqa_metrics()
    with tempfile.TemporaryDirectory() as work:
        iqa = pd.DataFrame(iqa_rows(clean_renders(args.data, truth, Path(work)), np.random.default_rng(0), metrics))
    stored_metrics = {m: metrics[m] for m in ("brisque", "piqe")}
    stored = pd.DataFrame(iqa_rows(stored_clips(args.data, truth), np.random.default_rng(2), stored_metrics))
    clean_ids = set(truth.loc[truth["clean"], "clip_id"])
    iqa_s = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as work:  # its own seed: the sync rows do not depend on the IQA part
        sync = pd.DataFrame(sync_rows(args.data, truth, np.random.default_rng(1), Path(work)))
    total_s = time.perf_counter() - began
    lines = [
        "# `fada eval` verification (`bench/verify_eval.py`)",
        "",
        f"Demo dataset: {DATA.clips} clips, {DATA.identities} identities, {DATA.size} px, {DATA.seconds} s, seed "
        f"{DATA.seed}. Run: {total_s / 60:.1f} min wall-clock on CPU (IQA part {iqa_s / 60:.1f} min).",
        "",
        "## IQA: clean frames best of all, pure noise worst?",
        "",
        "Each demo clip rendered again without the dataset's own defects (same face, motion and mouth; no",
        "blur, noise or flicker; H.264 like the stored clips). Share of clips whose score rates these clean",
        "frames better than the blurred and the noisy ones, and pure noise worse than both (mean over every",
        "5th frame, each scored at the size shown, never upscaled).",
        f"Target: BRISQUE orders >= {IQA_TARGET:.0%} of clips at blur σ 1.0 (both sizes). The JPEG column also",
        f"asks clean < JPEG (quality {JPEG_LEVEL}) < pure noise. BRISQUE scores are the SVR's output, not",
        "clipped to [0, 100] as OpenCV does (clean synthetic faces score below 0).",
        "",
        *iqa_table(iqa, list(metrics)),
        "",
        "Agreement with the `brisque` PyPI package (its own features and libsvm model):",
        "",
        *agreement_lines(iqa),
        "",
        "### The same on the clips as stored",
        "",
        f"{len(truth) - len(clean_ids)} of the {len(truth)} stored clips carry the dataset's defects (blur σ up to "
        f"{truth['blur_sigma'].max():.1f} px, noise σ up to {truth['noise_std'].max():.0f} grey levels, flicker), so "
        'their "clean" version is not clean: for a clip already blurred, adding noise asks blur against noise.',
        "",
        *iqa_table(stored, list(stored_metrics), target=False, clean_ids=clean_ids),
        "",
        "## Sync proxy on clips degraded like generated frames (64 px, H.264)",
        "",
        "conf = best-lag r above chance (the `sync_proxy` row); r = the raw best-lag r over ±15 frames.",
        "",
        *sync_table(sync),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    payload = {"data": DATA.__dict__, "seconds": round(total_s, 1), "iqa": iqa.to_dict("records"),
               "iqa_stored": stored.to_dict("records"), "sync": sync.to_dict("records")}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
