"""Face presence: the fraction of frames showing exactly one face, and the median face size.

Frames with no face or with several faces lower ``face_frac``; ``face_multi_frac`` (the
fraction with more than one face) lets the tiering name which of the two it was. A weaker
detection counts as a second face only when it is confident and not much smaller than the main
face, so a face-like pattern on clothes or in the background is not a second person.
"""

from __future__ import annotations

import numpy as np

from filters.base import ClipData, nan_result
from pipelines.faces import FaceBox

NAME = "face"
COLUMNS = ("face_frac", "face_multi_frac", "face_size")
OTHER_FACE_MIN_SCORE = 0.75  # detector confidence a second face needs to count
OTHER_FACE_MIN_SIZE = 0.5  # size a second face needs to count, relative to the main face


def count_faces(boxes: list[FaceBox]) -> int:
    """Faces in one frame: the best detection plus the other confident, comparably sized ones."""
    if not boxes:
        return 0
    main = boxes[0]
    others = [b for b in boxes[1:] if b.score >= OTHER_FACE_MIN_SCORE and b.size >= OTHER_FACE_MIN_SIZE * main.size]
    return 1 + len(others)


def score(clip: ClipData) -> dict[str, float | str]:
    """Face counts on the detected frames; ``face_size`` = median box side / shorter frame side."""
    if not clip.detections:
        return nan_result(COLUMNS, "face: no frames were analysed")
    counts = np.array([count_faces(boxes) for boxes in clip.detections])  # (T_detected,)
    side = min(clip.frames.shape[1:3])
    sizes = [boxes[0].size / side for boxes in clip.detections if boxes]
    return {
        "face_frac": float(np.mean(counts == 1)),
        "face_multi_frac": float(np.mean(counts > 1)),
        "face_size": float(np.median(sizes)) if sizes else 0.0,
    }
