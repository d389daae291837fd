"""The image-quality scorer of `fada curate`: sharpness, a cached pyiqa metric, OpenCV BRISQUE.

The measurements are `pipelines.metrics.quality`'s, which `fada eval` uses too.
"""

from __future__ import annotations

import cv2
import numpy as np

from filters.base import NAN, ClipData
from pipelines.metrics.quality import (
    BRISQUE_FILES,
    FRAME_STEP,
    brisque_model_dir,
    laplacian_sharpness,
    pyiqa_score,
    pyiqa_weights_problem,
)

NAME = "quality"
COLUMNS = ("iqa", "iqa_metric", "sharpness", "brisque")


def score(clip: ClipData) -> dict[str, float | str]:
    frames = clip.frames[::FRAME_STEP]
    notes = []
    result: dict[str, float | str] = {"sharpness": laplacian_sharpness(frames), "iqa": NAN, "brisque": NAN}
    metric = clip.settings.iqa_metric
    result["iqa_metric"] = metric or ""
    problem = pyiqa_weights_problem(metric) if metric else "iqa: no --iqa-metric chosen"
    if problem is None:
        try:
            result["iqa"] = pyiqa_score(frames, metric)
        except (RuntimeError, OSError, ValueError) as exc:  # weights present but unusable
            problem = f"iqa: {metric} failed ({' '.join(str(exc).split())[:160]})"
    if problem:
        notes.append(problem)
    folder = brisque_model_dir()
    if folder is not None:
        model, ranges = (str(folder / name) for name in BRISQUE_FILES)
        values = [cv2.quality.QualityBRISQUE_compute(f[:, :, ::-1].copy(), model, ranges)[0] for f in frames]
        result["brisque"] = float(np.mean(values))
    return {**result, "notes": "; ".join(notes)} if notes else result
