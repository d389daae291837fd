"""Lip sync: SyncNet (LSE-D / LSE-C / offset) when weights are given, and a weight-free proxy.

Proxy: the mouth opening (inner-lip gap / eye distance, from the shared face-mesh landmarks)
against the audio RMS in one window per video frame (640 samples at 16 kHz and 25 fps), the best
Pearson r over lags −15..15 frames. The sign follows SyncNet: a positive offset means the video
lags the audio (the mouth moves ``offset`` frames after the sound).

SyncNet (Chung & Zisserman, "Out of time", ACCV 2016) through the `syncnet_python` package's
model, evaluated as its `SyncNetInstance.evaluate` does: 5-frame 224×224 face windows against
20 MFCC steps, distances over ±15 offsets; LSE-D = min of the mean distance, LSE-C = median − min.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np

from filters.base import NAN, ClipData, interpolated_series
from pipelines import faces

NAME = "sync"
COLUMNS = ("sync_offset", "sync_conf", "sync_dist", "sync_proxy_offset", "sync_proxy_conf")
MAX_LAG = 15  # frames searched either side, as SyncNet's vshift
MIN_OVERLAP = 25  # fewest overlapping frames for a correlation at one lag


def audio_rms_per_frame(audio: np.ndarray, n_frames: int, sr: int, fps: float) -> np.ndarray:
    """RMS of the audio in each video frame's window of sr/fps samples, ``(n_frames,)``."""
    hop = int(round(sr / fps))
    padded = np.zeros(n_frames * hop, dtype=np.float64)
    usable = min(len(audio), len(padded))
    padded[:usable] = audio[:usable]
    return np.sqrt(np.mean(padded.reshape(n_frames, hop) ** 2, axis=1))  # (n_frames,)


def proxy_offset(mouth: np.ndarray, rms: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, float]:
    """(offset, r): the lag L maximising Pearson r between mouth[t] and rms[t − L]."""
    n = min(len(mouth), len(rms))
    best_lag, best_r = NAN, -np.inf
    for lag in range(-max_lag, max_lag + 1):
        video = mouth[max(lag, 0) : n + min(lag, 0)]
        sound = rms[max(-lag, 0) : n - max(lag, 0)]
        if len(video) < MIN_OVERLAP or video.std() < 1e-9 or sound.std() < 1e-9:
            continue
        r = float(np.corrcoef(video, sound)[0, 1])
        if r > best_r:
            best_lag, best_r = float(lag), r
    return (best_lag, best_r) if np.isfinite(best_r) else (NAN, NAN)


def _proxy(clip: ClipData) -> dict[str, float | str]:
    mouth = interpolated_series([None if p is None else faces.mouth_opening(p) for p in clip.landmarks])
    if mouth is None:
        return {
            "sync_proxy_offset": NAN,
            "sync_proxy_conf": NAN,
            "notes": "sync proxy: face mesh found in < half of the frames",
        }
    rms = audio_rms_per_frame(clip.audio, clip.n_frames, clip.audio_sr, clip.fps)
    offset, conf = proxy_offset(mouth, rms)
    result: dict[str, float | str] = {"sync_proxy_offset": offset, "sync_proxy_conf": conf}
    if not np.isfinite(conf):
        result["notes"] = "sync proxy: silent audio or still mouth, no correlation"
    return result


@functools.lru_cache(maxsize=2)
def load_syncnet(weights: Path):
    """The SyncNet model with weights from a local file (a state dict; loaded without pickle code)."""
    import torch
    from syncnet_python import SyncNetModel

    model = SyncNetModel(num_layers_in_fc_layers=1024)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def syncnet_scores(frames: np.ndarray, audio: np.ndarray, weights: Path, batch: int = 20) -> tuple[float, float, float]:
    """(offset, LSE-C, LSE-D) of a face-crop clip at 25 fps / 16 kHz, as `SyncNetInstance.evaluate`."""
    import cv2
    import python_speech_features
    import torch
    from syncnet_python.SyncNetInstance import calc_pdist

    model = load_syncnet(weights)
    bgr = np.stack([cv2.resize(f[:, :, ::-1], (224, 224), interpolation=cv2.INTER_AREA) for f in frames])
    video = torch.from_numpy(bgr.astype(np.float32)).permute(3, 0, 1, 2)[None]  # (1, 3, T, 224, 224)
    mfcc = python_speech_features.mfcc(audio.astype(np.float64) * 32768.0, 16000).T  # (13, 4T) as int16 wav
    audio_t = torch.from_numpy(mfcc.astype(np.float32))[None, None]  # (1, 1, 13, 4T)
    last = min(len(frames), len(audio) // 640) - 5
    if last < 2 * MAX_LAG:
        raise ValueError(f"clip too short for SyncNet: {len(frames)} frames")
    lip, aud = [], []
    with torch.no_grad():
        for i in range(0, last, batch):
            idx = range(i, min(last, i + batch))
            lip.append(model.forward_lip(torch.cat([video[:, :, v : v + 5] for v in idx])))
            aud.append(model.forward_aud(torch.cat([audio_t[:, :, :, v * 4 : v * 4 + 20] for v in idx])))
    dists = calc_pdist(torch.cat(lip), torch.cat(aud), vshift=MAX_LAG)
    mean_dist = torch.mean(torch.stack(dists, 1), 1)  # (2 * MAX_LAG + 1,)
    min_dist, min_idx = torch.min(mean_dist, 0)
    return float(MAX_LAG - min_idx), float(torch.median(mean_dist) - min_dist), float(min_dist)


def _syncnet(clip: ClipData) -> dict[str, float | str]:
    weights = clip.settings.syncnet_weights
    nan = {"sync_offset": NAN, "sync_conf": NAN, "sync_dist": NAN}
    if weights is None:
        return {**nan, "notes": "syncnet: no --syncnet-weights given"}
    if not Path(weights).is_file():
        return {**nan, "notes": f"syncnet: weights file {weights} not found"}
    try:
        offset, conf, dist = syncnet_scores(clip.frames, clip.audio, Path(weights))
    except (RuntimeError, ValueError, OSError, KeyError, pickle.UnpicklingError) as exc:  # bad weights, short clip
        return {**nan, "notes": f"syncnet: {' '.join(str(exc).split())[:200]}"}
    return {"sync_offset": offset, "sync_conf": conf, "sync_dist": dist}


def score(clip: ClipData) -> dict[str, float | str]:
    """SyncNet columns (NaN without weights) and the landmark proxy columns."""
    results = [_syncnet(clip), _proxy(clip)]
    notes = "; ".join(str(r.pop("notes")) for r in results if "notes" in r)
    merged: dict[str, float | str] = {k: v for r in results for k, v in r.items()}
    return {**merged, "notes": notes} if notes else merged
