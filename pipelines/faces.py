"""Faces in frames, through mediapipe 0.10.14's bundled models (no download).

Detection (BlazeFace short-range), the 468-point face mesh, the mouth opening measured on
it, and person segmentation. The models are loaded once per process and reused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

# Face-mesh indices (mediapipe canonical face model).
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))  # (upper, lower) inner-lip points, centre and sides
EYE_OUTER_CORNERS = (33, 263)  # right-eye and left-eye outer corners
MOUTH_CORNERS = (61, 291)


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates."""

    x0: float  # left edge
    y0: float  # top edge
    x1: float  # right edge
    y1: float  # bottom edge
    score: float  # detector confidence in [0, 1]

    @property
    def size(self) -> float:
        """Side of the box's bounding square, in pixels."""
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


def _solutions():
    os.environ.setdefault("GLOG_minloglevel", "2")  # keep mediapipe's C++ logging off our stderr
    warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
    import mediapipe as mp

    return mp.solutions


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide the C++ log lines mediapipe's graphs print on file descriptor 2 when they start."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _started(graph):
    """Run a graph once on a blank frame with its start-up logging hidden, and return it."""
    with _native_stderr_silenced():
        graph.process(np.zeros((64, 64, 3), dtype=np.uint8))
    return graph


def _new_face_mesh(static: bool):
    with _native_stderr_silenced():
        mesh = _solutions().face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.5
        )
    return _started(mesh)


@functools.lru_cache(maxsize=4)
def _face_detector(min_confidence: float):
    with _native_stderr_silenced():
        detector = _solutions().face_detection.FaceDetection(model_selection=0, min_detection_confidence=min_confidence)
    return _started(detector)


@functools.lru_cache(maxsize=2)
def _face_mesh(static: bool):
    return _new_face_mesh(static)


@functools.lru_cache(maxsize=1)
def _segmenter():
    with _native_stderr_silenced():
        segmenter = _solutions().selfie_segmentation.SelfieSegmentation(model_selection=0)
    return _started(segmenter)


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame of shape (H, W, 3), got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


def detect_faces(frame_rgb: np.ndarray, min_confidence: float = 0.5) -> list[FaceBox]:
    """All faces mediapipe's short-range detector finds in one RGB frame, best first."""
    frame = _as_rgb(frame_rgb)
    height, width = frame.shape[:2]
    result = _face_detector(min_confidence).process(frame)
    boxes = []
    for detection in result.detections or []:
        rel = detection.location_data.relative_bounding_box
        boxes.append(
            FaceBox(
                x0=rel.xmin * width,
                y0=rel.ymin * height,
                x1=(rel.xmin + rel.width) * width,
                y1=(rel.ymin + rel.height) * height,
                score=float(detection.score[0]),
            )
        )
    return sorted(boxes, key=lambda box: -box.score)


def face_keypoints(frame_rgb: np.ndarray, min_confidence: float = 0.5) -> dict[str, np.ndarray] | None:
    """The short-range detector's keypoints of the best face, in pixels, or None.

    Keys: ``right_eye``, ``left_eye`` (eye centres), ``nose``, ``mouth`` (mouth centre); each (2,).
    """
    frame = _as_rgb(frame_rgb)
    height, width = frame.shape[:2]
    result = _face_detector(min_confidence).process(frame)
    if not result.detections:
        return None
    best = max(result.detections, key=lambda detection: detection.score[0])
    points = best.location_data.relative_keypoints  # right eye, left eye, nose tip, mouth centre, ears
    names = ("right_eye", "left_eye", "nose", "mouth")
    return {name: np.array([points[i].x * width, points[i].y * height]) for i, name in enumerate(names)}


def face_found_rate(frames: np.ndarray, size: int = 256, min_confidence: float = 0.5) -> float:
    """Share of ``frames`` (T, H, W, 3) uint8 in which `detect_faces` finds a face, each frame
    upscaled (bicubic) to ``size`` × ``size`` first: the detector misses faces in small frames."""
    import cv2

    if len(frames) == 0:
        raise ValueError("face_found_rate needs at least one frame")
    found = [bool(detect_faces(cv2.resize(np.asarray(f), (size, size), interpolation=cv2.INTER_CUBIC), min_confidence))
             for f in frames]  # fmt: skip
    return sum(found) / len(found)


def _landmarks_from(result, width: int, height: int) -> np.ndarray | None:
    if not result.multi_face_landmarks:
        return None
    points = result.multi_face_landmarks[0].landmark
    return np.array([(p.x * width, p.y * height) for p in points], dtype=np.float32)  # (468, 2)


def face_landmarks(frame_rgb: np.ndarray) -> np.ndarray | None:
    """The 468 face-mesh landmarks of the most prominent face as (468, 2) pixel coordinates, or None."""
    frame = _as_rgb(frame_rgb)
    return _landmarks_from(_face_mesh(True).process(frame), frame.shape[1], frame.shape[0])


_IDLE_VIDEO_MESHES: list = []  # video-mode face-mesh graphs of closed trackers, reused after a reset


class FaceMeshTracker:
    """Face mesh in video mode (landmarks tracked across consecutive frames of one video).

    Use one tracker per video, as a context manager::

        with FaceMeshTracker() as tracker:
            points = [tracker.landmarks(frame) for frame in frames]

    A closed tracker's graph is kept and reset for the next tracker of the process (building a
    graph costs about as much as tracking ten frames); trackers open at the same time get their
    own graphs.
    """

    def __init__(self) -> None:
        if _IDLE_VIDEO_MESHES:
            self._mesh = _IDLE_VIDEO_MESHES.pop()
            self._mesh.reset()  # forget the previous video's track
        else:
            self._mesh = _new_face_mesh(static=False)

    def landmarks(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        frame = _as_rgb(frame_rgb)
        return _landmarks_from(self._mesh.process(frame), frame.shape[1], frame.shape[0])

    def close(self) -> None:
        if self._mesh is not None:
            _IDLE_VIDEO_MESHES.append(self._mesh)
            self._mesh = None

    def __enter__(self) -> FaceMeshTracker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners, in pixels: the face's scale."""
    right, left = EYE_OUTER_CORNERS
    return float(np.linalg.norm(landmarks[left] - landmarks[right]))


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap (mean over centre and sides) divided by the inter-ocular distance."""
    gaps = [np.linalg.norm(landmarks[lower] - landmarks[upper]) for upper, lower in INNER_LIP_PAIRS]
    return float(np.mean(gaps) / max(eye_distance(landmarks), 1e-6))


def person_mask(frame_rgb: np.ndarray) -> np.ndarray:
    """Per-pixel probability (H, W) float32 in [0, 1] that a pixel belongs to the person."""
    frame = _as_rgb(frame_rgb)
    return np.asarray(_segmenter().process(frame).segmentation_mask, dtype=np.float32)


def square_crop_box(box: FaceBox, width: int, height: int, scale: float = 1.6) -> tuple[int, int, int]:
    """A square window of side `scale × face size` centred on the face, kept inside the image.

    Returns (x0, y0, side) in pixels. Where the image is too small for the window, the side
    shrinks to the image's shorter edge.
    """
    side = int(round(min(box.size * scale, width, height)))
    cx, cy = box.centre
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side


def interpolated_series(values: list[float | None]) -> np.ndarray | None:
    """A per-frame series with gaps (None) filled by linear interpolation; None if under half is known."""
    known = np.array([v is not None for v in values])
    if known.sum() < max(2, len(values) // 2):
        return None
    index = np.arange(len(values))
    series = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.interp(index, index[known], series[known])
