"""Does `fada eval` measure what fada makes? The IQA ordering and the sync proxy on degraded demo clips.

Run on purpose (not a test)::

    python bench/verify_eval.py [--data DIR] [--out bench/results/verify_eval.md]

Makes the demo preset's dataset (24 clips, 5 identities, 128 px, 3 s; reused when ``--data``
already holds one), then:

1. IQA ordering: every 5th frame of each clip as it is (clean), Gaussian-blurred, with Gaussian
   noise, and pure uniform noise of the same size; the share of clips whose PIQE (lower is better)
   orders clean < blurred < noisy < pure noise, at each blur / noise level and at 128 and 64 px;
   the same share for Laplacian sharpness (higher = sharper), which is not an IQA.
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
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pipelines.demo_data import MARKER_FILE, DemoDataConfig, generate_demo_data
from pipelines.faces import FaceMeshTracker
from pipelines.media import AUDIO_SR, VIDEO_FPS, read_audio, read_video, write_video
from pipelines.metrics import mouth_window, proxies, quality

DATA = DemoDataConfig(clips=24, identities=5, size=128, seconds=3.0, seed=0, clean_fraction=0.5)  # demo preset
IQA_LEVELS = [(0.5, 0.05), (0.5, 0.1), (1.0, 0.05), (1.0, 0.1)]  # (blur sigma px, noise sigma in [0, 1])
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


def iqa_rows(data: Path, truth: pd.DataFrame, rng: np.random.Generator) -> list[dict]:
    rows = []
    for clip_id in truth["clip_id"]:
        frames = read_video(data / "clips" / f"{clip_id}.mp4")[0][:: quality.FRAME_STEP]
        for size in (128, 64):
            clean = degrade(frames, size, 0.0, 0.0, rng)
            pure = rng.integers(0, 256, clean.shape, dtype=np.uint8)
            base = {"piqe": quality.weight_free_iqa(clean), "sharpness": quality.laplacian_sharpness(clean)}
            worst = {"piqe": quality.weight_free_iqa(pure), "sharpness": quality.laplacian_sharpness(pure)}
            for blur, noise in IQA_LEVELS:
                blurred = degrade(clean, size, blur, 0.0, rng)
                noisy = degrade(clean, size, 0.0, noise, rng)
                piqe = [base["piqe"], quality.weight_free_iqa(blurred), quality.weight_free_iqa(noisy), worst["piqe"]]
                sharp = [base["sharpness"], quality.laplacian_sharpness(blurred), quality.laplacian_sharpness(noisy),
                         worst["sharpness"]]  # fmt: skip
                rows.append({"clip_id": clip_id, "size": size, "blur": blur, "noise": noise,
                             **dict(zip(("piqe_clean", "piqe_blurred", "piqe_noisy", "piqe_pure"), piqe, strict=True)),
                             "piqe_ordered": bool(piqe[0] < piqe[1] < piqe[2] < piqe[3]),
                             "sharpness_ordered": bool(sharp[0] > sharp[1] > sharp[2] > sharp[3])})  # fmt: skip
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


def iqa_table(df: pd.DataFrame) -> list[str]:
    pairs = [("clean", "blurred"), ("clean", "noisy"), ("blurred", "noisy"), ("noisy", "pure"), ("blurred", "pure")]
    lines = ["| size | blur σ (px) | noise σ | PIQE ordered | " + " | ".join(f"{a} < {b}" for a, b in pairs)
             + " | sharpness ordered | mean PIQE clean / blurred / noisy / pure |",
             "|---|---|---|---|" + "---|" * len(pairs) + "---|---|"]  # fmt: skip
    for (size, blur, noise), g in df.groupby(["size", "blur", "noise"], sort=False):
        means = " / ".join(f"{g[f'piqe_{k}'].mean():.1f}" for k in ("clean", "blurred", "noisy", "pure"))
        shares = " | ".join(f"{(g[f'piqe_{a}'] < g[f'piqe_{b}']).mean():.0%}" for a, b in pairs)
        lines.append(f"| {size} | {blur} | {noise} | {g['piqe_ordered'].mean():.0%} | {shares} | "
                     f"{g['sharpness_ordered'].mean():.0%} | {means} |")  # fmt: skip
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
    rng = np.random.default_rng(0)
    iqa = pd.DataFrame(iqa_rows(args.data, truth, rng))
    iqa_s = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as work:
        sync = pd.DataFrame(sync_rows(args.data, truth, rng, Path(work)))
    total_s = time.perf_counter() - began
    lines = [
        "# `fada eval` verification (`bench/verify_eval.py`)",
        "",
        f"Demo dataset: {DATA.clips} clips, {DATA.identities} identities, {DATA.size} px, {DATA.seconds} s, seed "
        f"{DATA.seed}. Run: {total_s / 60:.1f} min wall-clock on CPU (IQA part {iqa_s / 60:.1f} min).",
        "",
        "## IQA: PIQE (pyiqa, weight-free, lower is better) orders clean < blurred < noisy < pure noise?",
        "",
        "Share of clips with each PIQE relation (lower = better quality); every 5th frame of each clip.",
        "",
        *iqa_table(iqa),
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
               "sync": sync.to_dict("records")}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
