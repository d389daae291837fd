"""Does a checkpoint's generated mouth follow the speech? Speech-driven vs silent-driven control.

Generates two videos from one portrait with the same seed: one driven by the speech, one by
silence of the same length. For each (and for the real reference clip, if given) it measures,
against the energy of the *speech*:

- ``r_opening``: Pearson r between the face-mesh mouth opening (inner-lip gap / eye distance,
  frames upscaled to 256 px for the mesh) and the audio RMS per 640-sample window, at lag 0 and
  the best lag within ±2 frames;
- ``sync_proxy_conf`` / ``sync_proxy_offset``: curate's weight-free sync proxy (best r over
  ±15 frames, mouth opening or mouth darkness).

A model that listens gives clearly higher figures for the speech-driven video than for the silent
one; the silent video is the chance level. Writes ``OUT/mouth_sync.json``.

    python bench/mouth_sync_evidence.py --checkpoint runs/teacher --image data/identities/id4.png \\
        --speech data/clips/demo_0004.mp4 --out runs/evidence
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from filters import sync
from filters.base import analyse_clip
from pipelines import faces
from pipelines.generate import GenerateConfig
from pipelines.media import AUDIO_SR, VIDEO_FPS, read_audio, read_video, write_audio
from pipelines.metrics import lip_sync
from pipelines.pipeline import generate

MESH_SIZE = 256  # generated frames are upscaled to this side before the face mesh runs
NEAR_LAGS = 2  # frames either side searched for r_opening


def mouth_follows_speech(frames: np.ndarray, speech: np.ndarray) -> dict[str, float]:
    """The figures above for one video's frames (T, H, W, 3) against one speech signal."""
    upscaled = np.stack([cv2.resize(f, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_CUBIC) for f in frames])
    clip = analyse_clip(upscaled, speech)
    found = [p is not None for p in clip.landmarks]
    rms = lip_sync.audio_rms_per_frame(speech, len(frames), AUDIO_SR, VIDEO_FPS)
    result = {"frames": len(frames), "mesh_found_frac": float(np.mean(found))}
    opening = np.array([faces.mouth_opening(p) if p is not None else np.nan for p in clip.landmarks])
    if np.mean(found) >= 0.5 and np.nanstd(opening) > 1e-9:
        known = ~np.isnan(opening)
        opening = np.interp(np.arange(len(opening)), np.flatnonzero(known), opening[known])
        lagged = {lag: pearson_at_lag(opening, rms, lag) for lag in range(-NEAR_LAGS, NEAR_LAGS + 1)}
        result["r_opening_lag0"] = lagged[0]
        result["r_opening_best_near"] = max(lagged.values())
        result["mouth_opening_std"] = float(opening.std())
    proxy = sync.score(clip)
    result["sync_proxy_conf"] = float(proxy["sync_proxy_conf"])
    result["sync_proxy_offset"] = float(proxy["sync_proxy_offset"])
    return result


def pearson_at_lag(mouth: np.ndarray, rms: np.ndarray, lag: int) -> float:
    """Pearson r of ``mouth[t + lag]`` and ``rms[t]`` over the frames both cover."""
    n = min(len(mouth), len(rms))
    video, sound = mouth[max(lag, 0) : n + min(lag, 0)], rms[max(-lag, 0) : n - max(lag, 0)]
    return float(np.corrcoef(video, sound)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True, help="portrait (a held-out identity)")
    parser.add_argument("--speech", type=Path, required=True, help="speech (wav/mp4; a held-out clip)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    speech = read_audio(args.speech)
    silence_path = args.out / "silence.wav"
    write_audio(silence_path, np.zeros_like(speech))
    config = GenerateConfig(steps=args.steps)  # the checkpoint's own default scales
    report: dict[str, dict] = {}
    for name, audio_path in (("speech_driven", args.speech), ("silence_driven", silence_path)):
        video = args.out / f"{name}.mp4"
        stats = generate(args.checkpoint, args.image, audio_path, video, config, device=args.device, quiet=True)
        frames, _ = read_video(video)
        report[name] = mouth_follows_speech(frames, speech) | {"seconds": stats.seconds, "nfe": stats.nfe}
    if args.speech.suffix.lower() in (".mp4", ".mov", ".mkv"):
        frames, _ = read_video(args.speech)
        report["real_reference_clip"] = mouth_follows_speech(frames, speech)
    report["inputs"] = {"checkpoint": str(args.checkpoint), "image": str(args.image), "speech": str(args.speech)}
    (args.out / "mouth_sync.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
