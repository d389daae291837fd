"""The image-quality scorer of `fada curate`: BRISQUE, the ``iqa`` column (BRISQUE by default, or a
learned IQA read from a local cache), sharpness.

- ``brisque``: always; `pipelines.metrics.brisque` at the frames' own size, lower is better: the mean
  over `BRISQUE_FRAMES` frames spread evenly over every `FRAME_STEP`-th frame (at 512 px a frame
  costs about 23 ms, so every 5th frame would be a quarter of curation's CPU time; `fada eval`
  scores every 5th).
- ``iqa`` / ``iqa_metric``: the metric named in the settings. ``brisque`` (the default) is the
  column above; ``qalign`` or another pyiqa metric runs only when its weights are in the local
  cache (`pipelines.metrics.quality.learned_iqa_problem`); otherwise NaN and the reason.
- ``sharpness``: always; `pipelines.metrics.quality.laplacian_sharpness`.

The measurements are `pipelines.metrics`'s, which `fada eval` uses too.
"""

from __future__ import annotations

import numpy as np

from filters.base import NAN, ClipData
from pipelines.metrics.brisque import brisque
from pipelines.metrics.quality import BRISQUE, FRAME_STEP, laplacian_sharpness, learned_iqa_problem, pyiqa_score

NAME = "quality"
COLUMNS = ("iqa", "iqa_metric", "sharpness", "brisque")
BRISQUE_FRAMES = 8  # curation's BRISQUE: at most this many of the scored frames, evenly spread


def score(clip: ClipData) -> dict[str, float | str]:
    frames = clip.frames[::FRAME_STEP]
    metric = clip.settings.iqa_metric
    spread = frames[np.unique(np.linspace(0, len(frames) - 1, BRISQUE_FRAMES).round().astype(int))]
    result: dict[str, float | str] = {"sharpness": laplacian_sharpness(frames), "brisque": brisque(spread)}
    result["iqa"], result["iqa_metric"] = (result["brisque"], metric) if metric == BRISQUE else (NAN, metric or "")
    if metric == BRISQUE:
        return result
    problem = learned_iqa_problem(metric) if metric else "no --iqa-metric chosen"
    if problem is None:
        try:
            result["iqa"] = pyiqa_score(frames, metric)
        except (RuntimeError, OSError, ValueError) as exc:  # weights present but unusable
            problem = f"{metric} failed ({' '.join(str(exc).split())[:160]})"
    return {**result, "notes": f"iqa: {problem}"} if problem else result
