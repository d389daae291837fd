"""Background instability: how much the picture changes outside the person between frames.

Person pixels come from mediapipe selfie segmentation (`faces.person_mask`) of the first frame
of each analysed pair, widened by ``MASK_GROW`` pixels so that the person's move to the next
frame (a pixel or two at 25 fps) stays inside it; the rest is background. One mask per pair and
a pair every ``FRAME_STEP`` frames keep segmentation to an eighth of the frames. On the
background pixels, with Δ = grey(t+1) − grey(t):

- ``bg_instability``: mean |Δ| / 255 (flicker, camera shake, moving things, noise);
- ``bg_noise``: the temporal noise sigma in grey levels, 1.4826 · MAD(Δ) / √2 — robust to a
  global brightness change, so it separates sensor noise from flicker.
"""

from __future__ import annotations

import cv2
import numpy as np

from filters.base import ClipData, nan_result
from pipelines import faces

NAME = "background"
COLUMNS = ("bg_instability", "bg_noise")
FRAME_STEP = 8  # analyse the pair (t, t + 1) for every n-th t
MASK_GROW = 2  # pixels the person mask is widened by (motion between the two frames)
PERSON_THRESHOLD = 0.3  # mask probability above which a pixel counts as the person
MIN_BACKGROUND = 0.02  # fewest background pixels (fraction of the frame) for a valid pair


def background_change(frames: np.ndarray, masks: list[np.ndarray]) -> tuple[float, float]:
    """(instability, noise sigma) over frame pairs (frames[s], frames[s+1]), s = 0, FRAME_STEP, ...

    ``masks[i]``: the person probability ``(H, W)`` of the i-th pair's first frame.
    """
    changes, noises = [], []
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * MASK_GROW + 1, 2 * MASK_GROW + 1))
    for i, start in enumerate(range(0, len(frames) - 1, FRAME_STEP)):
        person = cv2.dilate((masks[i] >= PERSON_THRESHOLD).astype(np.uint8), grow)
        background = person == 0  # (H, W)
        if background.mean() < MIN_BACKGROUND:
            continue
        grey = frames[start : start + 2].astype(np.float32).mean(axis=-1)  # (2, H, W)
        delta = (grey[1] - grey[0])[background]  # (N,)
        changes.append(float(np.abs(delta).mean() / 255.0))
        noises.append(float(1.4826 * np.median(np.abs(delta - np.median(delta))) / np.sqrt(2)))
    if not changes:
        return float("nan"), float("nan")
    return float(np.mean(changes)), float(np.mean(noises))


def score(clip: ClipData) -> dict[str, float | str]:
    starts = range(0, clip.n_frames - 1, FRAME_STEP)
    masks = [faces.person_mask(clip.frames[s]) for s in starts]
    instability, noise = background_change(clip.frames, masks)
    if not np.isfinite(instability):
        return nan_result(COLUMNS, "background: person fills the frame, no background to measure")
    return {"bg_instability": instability, "bg_noise": noise}
