"""Check a demo dataset against its ground truth: face detection rate and mouth-audio sync.

Run on purpose (not a test)::

    python bench/check_demo_data.py [OUT_DIR] [--clips 24 --size 128 --seconds 3 --seed 0]

Generates the dataset (timed) unless OUT_DIR already holds one, then over every decoded frame
measures mediapipe's face-detection rate, and per clip the Pearson r between the face-mesh mouth
opening (inner-lip gap / eye distance) and the audio RMS per 640-sample frame window, at the true
offset and at the best lag in ±15 frames. Prints a table and writes bench/results/demo_data.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import faces
from pipelines.demo_data import MARKER_FILE, DemoDataConfig, frame_rms, generate_demo_data
from pipelines.media import read_audio, read_video

MAX_LAG = 15  # frames searched either side for the best lag


def lagged_pearson(video: np.ndarray, audio: np.ndarray, lag: int) -> float:
    """Pearson r between video[f] and audio[f - lag] (lag > 0: video lags audio)."""
    n = min(len(video), len(audio))
    f = np.arange(max(0, lag), min(n, n + lag))
    v, a = video[f], audio[f - lag]
    ok = np.isfinite(v)
    if ok.sum() < 5 or np.std(v[ok]) == 0 or np.std(a[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(v[ok], a[ok])[0, 1])


def mouth_track(frames: np.ndarray) -> np.ndarray:
    """Face-mesh mouth opening per frame (NaN where no face mesh was found)."""
    with faces.FaceMeshTracker() as tracker:
        points = [tracker.landmarks(frame) for frame in frames]
    return np.array([np.nan if p is None else faces.mouth_opening(p) for p in points])


def check_clip(path: Path, offset: int) -> dict:
    frames, _ = read_video(path)
    audio = read_audio(path)
    detected = [bool(faces.detect_faces(frame)) for frame in frames]
    mouth = mouth_track(frames)
    rms = frame_rms(audio)
    lags = {lag: lagged_pearson(mouth, rms, lag) for lag in range(-MAX_LAG, MAX_LAG + 1)}
    best = max(lags, key=lambda lag: -np.inf if np.isnan(lags[lag]) else lags[lag])
    return {
        "frames": len(frames),
        "detected": int(sum(detected)),
        "r_true_offset": lags[offset],
        "best_lag": best,
        "r_best": lags[best],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="bench/results/demo_data")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    seconds_to_make = None
    if not (out_dir / MARKER_FILE).is_file():
        config = DemoDataConfig(clips=args.clips, size=args.size, seconds=args.seconds, seed=args.seed)
        start = time.perf_counter()
        generate_demo_data(out_dir, config, quiet=True)
        seconds_to_make = time.perf_counter() - start
    truth = pd.read_parquet(out_dir / "truth.parquet")
    rows = []
    for row in truth.itertuples():
        result = check_clip(out_dir / "clips" / f"{row.clip_id}.mp4", int(row.offset_frames))
        rows.append(
            {
                "clip_id": row.clip_id,
                "identity": row.identity,
                "clean": row.clean,
                "offset_frames": row.offset_frames,
                **result,
            }
        )
    table = pd.DataFrame(rows)
    clean = table[table["clean"]]
    summary = {
        "clips": len(table),
        "seconds_to_make": seconds_to_make,
        "face_detection_rate": float(table["detected"].sum() / table["frames"].sum()),
        "min_clip_detection_rate": float((table["detected"] / table["frames"]).min()),
        "clean_r_true_offset_mean": float(clean["r_true_offset"].mean()),
        "clean_r_true_offset_min": float(clean["r_true_offset"].min()),
        "best_lag_equals_offset": float((table["best_lag"] == table["offset_frames"]).mean()),
    }
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps(summary, indent=2))
    results = Path("bench/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "demo_data.json").write_text(json.dumps({"summary": summary, "clips": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
