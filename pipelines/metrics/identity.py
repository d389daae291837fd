"""Identity: how close generated frames are to the portrait they were given (docs/DESIGN.md §3c).

A talking-portrait model must draw *this* face, in its colours, while the head moves and the mouth
opens. Both measures compare coarse images, so head motion of a few pixels and the mouth's change
barely move them, while another identity's face (other colours, other features) does:

- ``identity_psnr16`` (↑): PSNR (dB, images in [0, 1]) between each frame and the portrait, both
  area-downsampled to 16×16, averaged over frames;
- ``identity_colour_de`` (↓): CIE76 colour difference ΔE*ab between the mean colour of the central
  face region (the middle half of a face-centred crop, 8×8 of the 16×16 image) in each frame and in
  the portrait, averaged over frames.

Read them against two anchors on the same portrait: the real clip of that identity (a ceiling: real
head motion and mouth) and another identity's portrait (the "wrong face" floor).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.color import rgb2lab

IDENTITY_SIZE = 16  # side of the coarse images compared
EXTRACTOR = "portrait vs frames at 16×16 (area), weight-free"
FACE_REGION = slice(IDENTITY_SIZE // 4, 3 * IDENTITY_SIZE // 4)  # the middle half, rows and columns


def coarse(images: np.ndarray) -> np.ndarray:
    """(…, H, W, 3) uint8 → (…, 16, 16, 3) float in [0, 1], by area averaging."""
    flat = images.reshape(-1, *images.shape[-3:])
    small = [cv2.resize(image, (IDENTITY_SIZE, IDENTITY_SIZE), interpolation=cv2.INTER_AREA) for image in flat]
    return np.stack(small).astype(np.float64).reshape(*images.shape[:-3], IDENTITY_SIZE, IDENTITY_SIZE, 3) / 255.0


def identity_scores(frames: np.ndarray, portrait: np.ndarray) -> dict[str, float]:
    """``frames`` (T, H, W, 3) uint8 against ``portrait`` (H', W', 3) uint8 (the model's input crop, any size)."""
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"identity_scores needs frames (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    small, target = coarse(frames), coarse(portrait)  # (T, 16, 16, 3), (16, 16, 3)
    mse = ((small - target[None]) ** 2).mean(axis=(1, 2, 3))  # (T,)
    psnr = 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))
    face = rgb2lab(small[:, FACE_REGION, FACE_REGION]).mean(axis=(1, 2))  # (T, 3) mean L*a*b* of the face region
    face_target = rgb2lab(target[FACE_REGION, FACE_REGION]).mean(axis=(0, 1))  # (3,)
    delta_e = np.linalg.norm(face - face_target[None], axis=1)  # (T,)
    return {"identity_psnr16": float(psnr.mean()), "identity_colour_de": float(delta_e.mean())}


def fraction_of_range(value: float, floor: float, ceiling: float) -> float:
    """Where ``value`` lies from the floor (0) to the ceiling (1); works for either direction of better."""
    return float((value - floor) / (ceiling - floor)) if ceiling != floor else float("nan")
