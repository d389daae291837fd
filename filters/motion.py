"""Head motion from aligning the upper face to a reference frame, mouth motion from the landmarks.

``motion_head``: how far the head moves from its average pose over the clip, in face units: the
mean absolute deviation from the clip mean of rotation (radians) + log scale + translation (in eye
distances), after a light temporal smoothing. The pose of each frame is measured on pixels, not
on landmarks, because blur makes face-mesh landmarks jitter and that jitter would read as motion:

1. a fixed square around the clip's median face (``CROP_EYES`` eye distances a side, eye distance
   from the median landmarks) is cut from every frame, resampled to ``CROP_SIDE`` pixels and
   Gaussian-blurred by ``PRE_BLUR_EYES`` eye distances, so sharp and soft clips are compared at
   one resolution and pixel noise is damped;
2. the reference is the frame whose landmarks are nearest the clip's median landmarks; its
   upper-face mask is the face-mesh hull, widened by ``MASK_MARGIN_EYES`` eye distances (hairline,
   head outline), above the nose tip (the jaw and mouth move with speech);
3. every frame is aligned to the reference by an affine ECC warp (Evangelidis & Psarakis, "Parametric
   image alignment using enhanced correlation coefficient maximization", TPAMI 2008; OpenCV's
   ``findTransformECC``), each frame starting from its neighbour's warp; the warp's similarity part
   gives rotation, log scale and the translation of the crop centre. Each frame starts at its
   neighbour's warp, so a few ECC steps converge: stopping once the correlation gains less than
   1e-3 (at most 15 steps) is 6× cheaper than 1e-4 / 50 steps and ranks the demo clips' motion
   levels as well (Spearman 0.925 vs 0.904 over 24 clips, bench/results/curate_profile_*.md).
   Every ``ALIGN_EVERY``-th frame is aligned; the pose series is interpolated between them
   before its light smoothing (head motion at 25 fps is smooth over two frames).

ECC maximises a correlation coefficient, so it is unaffected by gain and offset changes of
brightness, and a blur shared by the frames of a clip does not move its optimum.

``motion_mouth``: mean per-frame change of the mouth opening (inner-lip gap / eye distance).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from filters.base import ClipData, nan_result
from pipelines import faces
from pipelines.faces import interpolated_series

NAME = "motion"
COLUMNS = ("motion_head", "motion_mouth")
NOSE_TIP = 1  # face-mesh index of the nose tip
CROP_EYES = 4.0  # side of the analysed square around the face, in eye distances
CROP_SIDE = 96  # the square resampled to this many pixels a side
PRE_BLUR_EYES = 0.06  # Gaussian sigma applied to every crop, in eye distances
MASK_MARGIN_EYES = 0.3  # upper-face mask: face-mesh hull widened by this many eye distances
SMOOTH_FRAMES = 1.0  # Gaussian sigma (frames) applied to the pose series
MIN_ALIGNED = 0.5  # fewest frames (fraction) that must align for a score
ALIGN_EVERY = 2  # align every n-th frame (counted from the reference); the smoothed pose is interpolated between
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 15, 1e-3)  # ≤ 15 steps, stop when ρ gains < 1e-3


def enough_faces(landmarks: list[np.ndarray | None]) -> bool:
    """Whether at least half of the frames (and two) have face-mesh landmarks."""
    return sum(p is not None for p in landmarks) >= max(2, len(landmarks) / 2)


def face_crops(frames: np.ndarray, centre: np.ndarray, eye_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Grey float32 crops ``(T, CROP_SIDE, CROP_SIDE)`` of a fixed square around ``centre``, and its 2×3 map."""
    k = CROP_SIDE / (CROP_EYES * eye_distance)  # crop pixels per frame pixel
    to_crop = np.array([[k, 0, CROP_SIDE / 2 - k * centre[0]], [0, k, CROP_SIDE / 2 - k * centre[1]]])
    sigma = PRE_BLUR_EYES * eye_distance * k
    crops = [
        cv2.GaussianBlur(
            cv2.warpAffine(
                cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), to_crop, (CROP_SIDE, CROP_SIDE),
                flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE,
            ).astype(np.float32),
            (0, 0), sigma,
        )
        for frame in frames
    ]  # fmt: skip
    return np.stack(crops), to_crop  # (T, S, S)


def upper_face_mask(points: np.ndarray, eye_distance: float) -> np.ndarray:
    """uint8 ``(S, S)`` mask: the hull of the landmarks ``points`` (crop pixels), widened, above the nose tip."""
    mask = np.zeros((CROP_SIDE, CROP_SIDE), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.float32)).astype(np.int32), 255)
    radius = max(1, int(round(MASK_MARGIN_EYES * eye_distance)))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    mask[max(0, int(points[NOSE_TIP, 1])) :] = 0
    return mask


def warp_pose(warp: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(rotation, log scale, tx, ty) of the similarity part of an affine 2×3 ``warp``; t moves ``centre``."""
    linear = warp[:, :2].astype(np.float64)
    a, b = (linear[0, 0] + linear[1, 1]) / 2, (linear[1, 0] - linear[0, 1]) / 2
    tx, ty = linear @ centre + warp[:, 2] - centre
    return np.array([np.arctan2(b, a), np.log(np.hypot(a, b)), tx, ty])


def head_poses(frames: np.ndarray, landmarks: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-frame pose relative to the reference frame, ``(T, 4)``, and which frames were aligned ``(T,)``.

    Pose columns: rotation (radians), log scale, translation x and y in eye distances; NaN rows
    where ECC failed or the frame was not analysed (every ``ALIGN_EVERY``-th frame from the
    reference is). None if under half of the frames have landmarks.
    """
    if not enough_faces(landmarks):
        return None
    median_shape = np.median(np.stack([p for p in landmarks if p is not None]), axis=0)  # (468, 2)
    eye = max(faces.eye_distance(median_shape), 1e-6)
    reference = int(np.argmin([np.inf if p is None else np.abs(p - median_shape).mean() for p in landmarks]))
    tried = np.zeros(len(frames), bool)
    tried[reference % ALIGN_EVERY :: ALIGN_EVERY] = True
    crops = np.zeros((len(frames), CROP_SIDE, CROP_SIDE), np.float32)
    crops[tried], to_crop = face_crops(frames[tried], median_shape.mean(axis=0), eye)  # (T, S, S), analysed rows
    eye_in_crop = CROP_SIDE / CROP_EYES
    points = landmarks[reference] @ to_crop[:, :2].T + to_crop[:, 2]  # (468, 2) crop pixels
    mask = upper_face_mask(points, eye_in_crop)
    centre = np.array([CROP_SIDE / 2, CROP_SIDE / 2])
    poses = np.full((len(frames), 4), np.nan)
    poses[reference] = 0.0
    step = ALIGN_EVERY
    for order in (range(reference + step, len(frames), step), range(reference - step, -1, -step)):
        warp = np.eye(2, 3, dtype=np.float32)
        for t in order:
            try:  # the reference, masked to its upper face, is warped onto frame t
                _, found_warp = cv2.findTransformECC(
                    crops[t], crops[reference], warp.copy(), cv2.MOTION_AFFINE, ECC_CRITERIA, mask, 1
                )
            except cv2.error:  # no convergence (e.g. the face left the crop): a gap, filled later
                continue
            warp = found_warp
            poses[t] = warp_pose(warp, centre)
    poses[:, 2:] /= eye_in_crop  # translation in eye distances
    return poses, tried


def head_motion(frames: np.ndarray, landmarks: list[np.ndarray | None]) -> float:
    """Mean absolute pose deviation from the clip's mean pose; NaN if the face or the alignment is missing."""
    found = head_poses(frames, landmarks)
    if found is None:
        return float("nan")
    poses, tried = found
    aligned = np.isfinite(poses).all(axis=1)
    if aligned.sum() < max(2, MIN_ALIGNED * tried.sum()):
        return float("nan")
    index = np.arange(len(poses))
    poses = np.stack([np.interp(index, index[aligned], column[aligned]) for column in poses.T], axis=1)  # (T, 4)
    poses = gaussian_filter1d(poses, SMOOTH_FRAMES, axis=0, mode="nearest")
    return float(np.abs(poses - poses.mean(axis=0)).mean(axis=0).sum())


def score(clip: ClipData) -> dict[str, float | str]:
    mouth = interpolated_series([None if p is None else faces.mouth_opening(p) for p in clip.landmarks])
    if mouth is None or not enough_faces(clip.landmarks):
        return nan_result(COLUMNS, "motion: face mesh found in < half of the frames")
    head = head_motion(clip.frames, clip.landmarks)
    if not np.isfinite(head):
        return nan_result(COLUMNS, "motion: the upper face could not be aligned on half of the frames")
    return {"motion_head": head, "motion_mouth": float(np.abs(np.diff(mouth)).mean())}
