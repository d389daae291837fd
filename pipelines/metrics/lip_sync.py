"""Lip-sync measurements shared by curation (`filters.sync`) and `fada eval` (`pipelines.metrics.proxies`).

A per-frame mouth signal against the audio RMS in one window per video frame (640 samples at 16 kHz
and 25 fps), the best Pearson r over lags −15..15 frames. The sign follows SyncNet: a positive
offset means the video lags the audio (the mouth moves ``offset`` frames after the sound). Mouth
signals: the mouth opening from face-mesh landmarks, and the mouth darkness read from pixels as
SyncNet does: 1 − (mean grey of a Gaussian window on the mouth) / (mean grey of a 2.5× wider
window around it), the window centred on the temporally smoothed lip landmarks and sized by the
clip's median eye distance.

SyncNet (Chung & Zisserman, "Out of time", ACCV 2016) through the `syncnet_python` package's
model, evaluated as its `SyncNetInstance.evaluate` does: 5-frame 224×224 face windows against
20 MFCC steps, distances over ±15 offsets; LSE-D = min of the mean distance, LSE-C = median − min.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from pipelines import faces
from pipelines.faces import interpolated_series

NAN = float("nan")
MAX_LAG = 15  # frames searched either side, as SyncNet's vshift
MIN_OVERLAP = 25  # fewest overlapping frames for a correlation at one lag
LIP_POINTS = (*(i for pair in faces.INNER_LIP_PAIRS for i in pair), *faces.MOUTH_CORNERS)  # mouth box centre
MOUTH_SIGMA = (0.25, 0.18)  # (x, y) Gaussian sigma of the mouth window, in eye distances
SURROUND_SCALE = 2.5  # the surround window's sigma / the mouth window's sigma
CENTRE_SMOOTH_FRAMES = 1.5  # Gaussian sigma (frames) on the mouth centre track (landmark jitter)


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


def mouth_track(landmarks: list[np.ndarray | None]) -> tuple[np.ndarray, float] | None:
    """Smoothed mouth centres ``(T, 2)`` in pixels and the median eye distance; None if under half is known."""
    centres = [None if p is None else p[list(LIP_POINTS)].mean(axis=0) for p in landmarks]
    cx = interpolated_series([None if c is None else float(c[0]) for c in centres])
    cy = interpolated_series([None if c is None else float(c[1]) for c in centres])
    if cx is None or cy is None:
        return None
    eye = float(np.median([faces.eye_distance(p) for p in landmarks if p is not None]))
    track = np.stack([cx, cy], axis=1)  # (T, 2)
    return gaussian_filter1d(track, CENTRE_SMOOTH_FRAMES, axis=0, mode="nearest"), eye


def mouth_darkness(frames: np.ndarray, centres: np.ndarray, eye_distance: float) -> np.ndarray:
    """Per-frame darkness of the mouth against its surround, ``(T,)``: 1 − mean(mouth) / mean(surround).

    Means are Gaussian-weighted grey levels; the mouth window has sigmas ``MOUTH_SIGMA`` × eye
    distance around ``centres[t]``, the surround window ``SURROUND_SCALE`` times wider.
    """
    height, width = frames.shape[1:3]
    sx, sy = (max(s * eye_distance, 0.5) for s in MOUTH_SIGMA)
    reach = 3 * SURROUND_SCALE * max(sx, sy)  # half-side of the pixel box the windows need
    darkness = np.empty(len(frames))
    for t, (frame, (x, y)) in enumerate(zip(frames, centres, strict=True)):
        x0, x1 = int(max(0, np.floor(x - reach))), int(min(width, np.ceil(x + reach) + 1))
        y0, y1 = int(max(0, np.floor(y - reach))), int(min(height, np.ceil(y + reach) + 1))
        if x1 <= x0 or y1 <= y0:  # mouth centre off the frame
            darkness[t] = NAN
            continue
        grey = frame[y0:y1, x0:x1].astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (h, w)
        dx2, dy2 = ((np.arange(x0, x1) - x) / sx) ** 2, ((np.arange(y0, y1) - y) / sy) ** 2  # (w,), (h,)
        means = []
        for scale in (1.0, SURROUND_SCALE):  # a Gaussian is separable: weights = wy ⊗ wx
            wx, wy = np.exp(-0.5 * dx2 / scale**2), np.exp(-0.5 * dy2 / scale**2)
            means.append(float(wy @ grey @ wx) / (wy.sum() * wx.sum()))
        darkness[t] = 1.0 - means[0] / max(means[1], 1.0)
    known = np.isfinite(darkness)
    if not known.any():
        return darkness
    return np.interp(np.arange(len(darkness)), np.flatnonzero(known), darkness[known])


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


def syncnet_columns(frames: np.ndarray, audio: np.ndarray, weights: Path | None) -> dict[str, float | str]:
    """``sync_offset``, ``sync_conf``, ``sync_dist`` from SyncNet (NaN and a note without weights)."""
    nan = {"sync_offset": NAN, "sync_conf": NAN, "sync_dist": NAN}
    if weights is None:
        return {**nan, "notes": "syncnet: no --syncnet-weights given"}
    if not Path(weights).is_file():
        return {**nan, "notes": f"syncnet: weights file {weights} not found"}
    try:
        offset, conf, dist = syncnet_scores(frames, audio, Path(weights))
    except (RuntimeError, ValueError, OSError, KeyError, pickle.UnpicklingError) as exc:  # bad weights, short clip
        return {**nan, "notes": f"syncnet: {' '.join(str(exc).split())[:200]}"}
    return {"sync_offset": offset, "sync_conf": conf, "sync_dist": dist}
