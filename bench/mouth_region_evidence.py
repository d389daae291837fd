"""Mouth darkness at a fixed place vs speech energy, for generated videos the face mesh cannot read.

`mouth_sync_evidence.py` needs the face mesh to find the face in the generated frames; on noisy
64-px frames it often does not (the mesh found a face in 1–3 of 75 frames of the demo teacher's
videos even where a face is plainly drawn). This proxy needs the mesh only once, on the portrait
as `fada generate` crops it: the mouth centre and eye distance found there fix a window, and each
generated frame's mouth darkness in that window (`pipelines.metrics.lip_sync.mouth_darkness`: 1 − mean grey of a
Gaussian mouth window / mean grey of a 2.5× wider one) is correlated with the speech RMS per frame.
It assumes the generated face stays where the portrait's face is (what the model is trained to
do); run it on the real clip (``--real``, window from the clip's own first frame) to see the
ceiling, and on the silence-driven video of the same model for the chance level.

    python bench/mouth_region_evidence.py --image data/identities/id4.png --speech data/clips/demo_0014.mp4 \\
        --videos runs/evidence/speech_driven.mp4 runs/evidence/silence_driven.mp4 --real data/clips/demo_0014.mp4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from mouth_sync_evidence import MESH_SIZE, NEAR_LAGS, pearson_at_lag
from PIL import Image

from pipelines import faces
from pipelines.generate import GenerateConfig, crop_portrait
from pipelines.media import AUDIO_SR, VIDEO_FPS, read_audio, read_video
from pipelines.metrics import lip_sync as sync

CROP_SCALE = GenerateConfig().crop_scale  # `fada generate`'s default --crop-scale


def mouth_window(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """(mouth centre (2,), eye distance) in ``frame``'s pixels, from the face mesh on it upscaled."""
    scale = MESH_SIZE / frame.shape[1]
    points = faces.face_landmarks(cv2.resize(frame, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_CUBIC))
    if points is None:
        raise SystemExit("the face mesh found no face in the window frame; use a frontal portrait")
    centre = points[list(faces.MOUTH_CORNERS)].mean(axis=0) / scale
    return centre, faces.eye_distance(points) / scale


def darkness_vs_speech(frames: np.ndarray, speech: np.ndarray, centre: np.ndarray, eye: float) -> dict:
    """Pearson r of the fixed-window mouth darkness and the speech RMS: lag 0 and best within ±2."""
    darkness = sync.mouth_darkness(frames, np.repeat(centre[None], len(frames), axis=0), eye)
    rms = sync.audio_rms_per_frame(speech, len(frames), AUDIO_SR, VIDEO_FPS)
    lagged = {lag: pearson_at_lag(darkness, rms, lag) for lag in range(-NEAR_LAGS, NEAR_LAGS + 1)}
    return {"r_darkness_lag0": lagged[0], "r_darkness_best_near": max(lagged.values()), "darkness_std": darkness.std()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True, help="the portrait the videos were generated from")
    parser.add_argument("--speech", type=Path, required=True, help="the speech (wav/mp4) the r is measured against")
    parser.add_argument("--videos", type=Path, nargs="+", required=True, help="generated videos")
    parser.add_argument("--real", type=Path, help="the real clip of that speech (the ceiling)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    speech = read_audio(args.speech)
    results = {}
    first, _ = read_video(args.videos[0])
    portrait = np.asarray(Image.open(args.image).convert("RGB"))
    centre, eye = mouth_window(crop_portrait(portrait, first.shape[1], True, CROP_SCALE, args.image))
    for video in args.videos:
        frames, _ = read_video(video)
        results[str(video)] = darkness_vs_speech(frames, speech, centre, eye)
    if args.real is not None:
        frames, _ = read_video(args.real)
        frames = np.stack([cv2.resize(f, first.shape[1:3][::-1], interpolation=cv2.INTER_AREA) for f in frames])
        real_centre, real_eye = mouth_window(frames[0])
        results[f"{args.real} (real)"] = darkness_vs_speech(frames, speech, real_centre, real_eye)
    results = {k: {name: round(float(v), 4) for name, v in figures.items()} for k, figures in results.items()}
    text = json.dumps(results, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
