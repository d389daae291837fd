"""Head and mouth motion from the shared face-mesh landmarks.

``motion_head``: how far the head moves from its average pose over the clip, in face units.
Each frame's upper-face landmarks (above the nose tip: eyes, brows, forehead, cheeks — not the
jaw, which moves with speech) are fitted to the clip's mean upper-face shape by a similarity
transform (Umeyama, TPAMI 1991); the score is the mean absolute deviation from the clip mean of
rotation (radians) + log scale + translation (in eye distances), after a light temporal
smoothing so landmark jitter does not count as motion.
``motion_mouth``: mean per-frame change of the mouth opening (inner-lip gap / eye distance).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from filters.base import ClipData, interpolated_series, nan_result
from pipelines import faces

NAME = "motion"
COLUMNS = ("motion_head", "motion_mouth")
NOSE_TIP = 1  # face-mesh index of the nose tip
SMOOTH_FRAMES = 2.0  # Gaussian sigma (frames) applied to the pose series


def similarity_pose(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(rotation, log scale, tx, ty) of the similarity transform taking ``reference`` onto ``points``."""
    centred_ref, centred = reference - reference.mean(axis=0), points - points.mean(axis=0)  # (N, 2)
    u, s, vt = np.linalg.svd(centred_ref.T @ centred)
    rotation = (u @ vt).T  # (2, 2)
    scale = s.sum() / (centred_ref**2).sum()
    tx, ty = points.mean(axis=0) - reference.mean(axis=0)
    return np.array([np.arctan2(rotation[1, 0], rotation[0, 0]), np.log(scale), tx, ty])


def head_motion(landmarks: list[np.ndarray | None]) -> float:
    """Mean absolute pose deviation from the clip's mean pose; NaN if under half the frames have a face."""
    found = [p for p in landmarks if p is not None]
    if len(found) < max(2, len(landmarks) / 2):
        return float("nan")
    stack = np.stack(found)  # (T', 468, 2)
    mean_shape = stack.mean(axis=0)  # (468, 2)
    upper = mean_shape[:, 1] < mean_shape[NOSE_TIP, 1]  # rigid part of the face
    eye = max(faces.eye_distance(mean_shape), 1e-6)
    poses = np.stack([similarity_pose(p[upper], mean_shape[upper]) for p in stack])  # (T', 4)
    poses[:, 2:] /= eye  # translation in eye distances
    poses = gaussian_filter1d(poses, SMOOTH_FRAMES, axis=0, mode="nearest")
    return float(np.abs(poses - poses.mean(axis=0)).mean(axis=0).sum())


def score(clip: ClipData) -> dict[str, float | str]:
    mouth = interpolated_series([None if p is None else faces.mouth_opening(p) for p in clip.landmarks])
    head = head_motion(clip.landmarks)
    if mouth is None or not np.isfinite(head):
        return nan_result(COLUMNS, "motion: face mesh found in < half of the frames")
    return {"motion_head": head, "motion_mouth": float(np.abs(np.diff(mouth)).mean())}
