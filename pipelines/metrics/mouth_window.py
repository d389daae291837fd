"""A mouth window for videos the face mesh cannot read: found once, then followed frame to frame.

The face mesh reads sharp faces of 100 px and more; on 64-px, noisy generated frames it finds a
face in a few frames at most, even where one is plainly drawn. This route needs it only once:

1. `locate_mouth`: the mesh runs on an upscaled (``MESH_SIZE``²) still where the face is clearest —
   the reference portrait when one is given, else the video's temporal median (noise averages
   out), else its sharpest frames — and gives the mouth centre and the eye distance (the scale);
   where the mesh reads none of them, the face detector's keypoints (mouth centre, eye centres) on
   the same upscaled stills stand in;
2. `follow_mouth`: a face patch cut around the mouth in that still is matched (normalised
   cross-correlation of Gaussian-smoothed grey images, `cv2.matchTemplate`) within
   ``SEARCH_FRACTION`` of the frame side of where it was found; the track is smoothed over time.

The sync proxy then reads the mouth darkness in that window (`metrics.lip_sync.mouth_darkness`) and
the E-FID proxy the window's pixels (`window_descriptors`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from pipelines import faces
from pipelines.metrics import quality

MESH_SIZE = 256  # stills are upscaled (bicubic) to this side before the face mesh runs
SHARPEST_FRAMES = 5  # frames tried, sharpest first, when the median still shows no face
PATCH_EYES = 1.6  # side of the tracked face patch, in eye distances, centred between mouth and eyes
SEARCH_FRACTION = 0.15  # the patch moves at most this share of the frame side from its anchor
TRACK_SMOOTH_FRAMES = 1.5  # Gaussian sigma (frames) on the window track
MATCH_SMOOTH = 1.0  # Gaussian sigma (pixels) on the grey images before matching (noise)
DESCRIPTOR_SIDE = 8  # the E-FID window descriptor: the mouth window resampled to side² grey pixels
DESCRIPTOR_EYES = 1.2  # side of the descriptor window, in eye distances
EYE_CORNERS_PER_CENTRES = 1.45  # outer-eye-corner distance / eye-centre distance (adult face proportions)


@dataclass(frozen=True)
class MouthAnchor:
    """Where the mouth is in the still it was found on, in the video's pixel coordinates."""

    centre: tuple[float, float]  # (x, y) mouth centre (midpoint of the mouth corners)
    eye_distance: float  # outer-eye-corner distance: the window's scale
    eyes_centre: tuple[float, float]  # (x, y) midpoint of the outer eye corners
    still: np.ndarray  # (H, W, 3) uint8: the still the mesh read, at the video's size
    source: str  # what found it, on which still: "face mesh on the median frame", "face detector on frame 12", ...


def _mesh_on_upscaled(still: np.ndarray) -> np.ndarray | None:
    """Face-mesh landmarks (468, 2) of ``still`` upscaled to MESH_SIZE², in ``still``'s pixels."""
    height, width = still.shape[:2]
    points = faces.face_landmarks(cv2.resize(still, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_CUBIC))
    if points is None:
        return None
    return points * np.array([width / MESH_SIZE, height / MESH_SIZE], np.float32)


def _anchor_from_mesh(still: np.ndarray, source: str) -> MouthAnchor | None:
    points = _mesh_on_upscaled(still)
    if points is None:
        return None
    mouth = points[list(faces.MOUTH_CORNERS)].mean(axis=0)
    eyes = points[list(faces.EYE_OUTER_CORNERS)].mean(axis=0)
    return MouthAnchor((float(mouth[0]), float(mouth[1])), faces.eye_distance(points),
                       (float(eyes[0]), float(eyes[1])), still, f"face mesh on the {source}")  # fmt: skip


def _anchor_from_detector(still: np.ndarray, source: str) -> MouthAnchor | None:
    height, width = still.shape[:2]
    points = faces.face_keypoints(cv2.resize(still, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_CUBIC))
    if points is None:
        return None
    scale = np.array([width / MESH_SIZE, height / MESH_SIZE])
    mouth, right, left = (points[k] * scale for k in ("mouth", "right_eye", "left_eye"))
    eyes = (right + left) / 2
    eye_distance = EYE_CORNERS_PER_CENTRES * float(np.linalg.norm(left - right))
    return MouthAnchor((float(mouth[0]), float(mouth[1])), eye_distance, (float(eyes[0]), float(eyes[1])), still,
                       f"face detector on the {source}")  # fmt: skip


def locate_mouth(frames: np.ndarray, portrait: np.ndarray | None = None) -> MouthAnchor | None:
    """The mouth of ``frames`` (T, H, W, 3) uint8, found once on the clearest still; None if no face.

    ``portrait``: the reference image the video was generated from (any size; resized to the
    frames' size), tried first. It must frame the face as the video does: its mouth position is
    taken as is and only the frame-to-frame motion is tracked (`fada eval` passes the paired
    reference video's median frame).
    """
    height, width = frames.shape[1:3]
    stills: list[tuple[np.ndarray, str]] = []
    if portrait is not None:
        stills.append((cv2.resize(portrait, (width, height), interpolation=cv2.INTER_AREA), "portrait"))
    stills.append((np.median(frames, axis=0).astype(np.uint8), "median frame"))
    sharpness = [quality.laplacian_sharpness(frame[None]) for frame in frames]
    stills += [(frames[i], f"frame {i}") for i in np.argsort(sharpness)[::-1][:SHARPEST_FRAMES]]
    for find in (_anchor_from_mesh, _anchor_from_detector):
        for still, source in stills:
            anchor = find(still, source)
            if anchor is not None:
                return anchor
    return None


def _smoothed_grey(frame: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(grey, (0, 0), MATCH_SMOOTH)


def follow_mouth(frames: np.ndarray, anchor: MouthAnchor) -> np.ndarray:
    """Mouth centres ``(T, 2)`` in pixels: the anchor's face patch matched in every frame, smoothed."""
    height, width = frames.shape[1:3]
    mouth, eyes = np.array(anchor.centre), np.array(anchor.eyes_centre)
    patch_centre = (mouth + eyes) / 2
    half = max(4, int(round(PATCH_EYES * anchor.eye_distance / 2)))
    px0 = int(np.clip(round(patch_centre[0]) - half, 0, width - 2 * half))
    py0 = int(np.clip(round(patch_centre[1]) - half, 0, height - 2 * half))
    if 2 * half > min(width, height):  # face fills the frame: nothing to follow
        return np.repeat(mouth[None], len(frames), axis=0)
    template = _smoothed_grey(anchor.still)[py0 : py0 + 2 * half, px0 : px0 + 2 * half]
    reach = max(1, int(round(SEARCH_FRACTION * max(width, height))))
    sx0, sy0 = max(0, px0 - reach), max(0, py0 - reach)
    sx1, sy1 = min(width, px0 + 2 * half + reach), min(height, py0 + 2 * half + reach)
    shifts = np.empty((len(frames), 2))
    for t, frame in enumerate(frames):
        area = _smoothed_grey(frame)[sy0:sy1, sx0:sx1]
        response = cv2.matchTemplate(area, template, cv2.TM_CCOEFF_NORMED)  # (h, w)
        _, _, _, (bx, by) = cv2.minMaxLoc(response)
        shifts[t] = (sx0 + bx - px0, sy0 + by - py0)
    shifts = gaussian_filter1d(shifts, TRACK_SMOOTH_FRAMES, axis=0, mode="nearest")
    return mouth[None] + shifts  # (T, 2)


def window_descriptors(frames: np.ndarray, centres: np.ndarray, eye_distance: float) -> np.ndarray:
    """``(T, DESCRIPTOR_SIDE²)``: the grey mouth window of each frame, resampled, contrast-normalised,
    with the video's median window removed (identity out, expression kept)."""
    side = DESCRIPTOR_EYES * eye_distance
    corners = np.float32([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5]]) * side
    target = np.float32([[0, 0], [DESCRIPTOR_SIDE, 0], [0, DESCRIPTOR_SIDE]])
    windows = []
    for frame, (x, y) in zip(frames, centres, strict=True):
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        grey = cv2.GaussianBlur(grey, (0, 0), max(0.5 * side / DESCRIPTOR_SIDE, 0.3))  # anti-alias the resampling
        matrix = cv2.getAffineTransform(corners + np.float32([x, y]), target)
        window = cv2.warpAffine(grey, matrix, (DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        windows.append((window - window.mean()).ravel())
    windows = np.stack(windows)  # (T, side²)
    return windows - np.median(windows, axis=0)
