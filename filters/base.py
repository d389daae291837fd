"""What every curation scorer receives, and the one step that fills it.

Every scorer in `filters/` is a module with::

    NAME: str                                   # short name, recorded in the manifest metadata
    COLUMNS: tuple[str, ...]                    # the manifest columns it writes
    def score(clip: ClipData) -> dict[str, float | str]

A scorer that cannot run returns NaN for its columns and a reason under the key ``"notes"``.
The per-frame face analysis (face-mesh landmarks on every frame, face detections on every
``detect_every``-th frame) is computed once by `analyse_clip` and shared by all scorers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines import faces
from pipelines.media import AUDIO_SR, VIDEO_FPS

NAN = float("nan")


@dataclass(frozen=True)
class ScoringSettings:
    """Options of the scorers that need weights; everything else is weight-free."""

    syncnet_weights: Path | None = None  # SyncNet `syncnet_v2.model`; None: SyncNet columns are NaN
    # the `iqa` column: brisque (built in, lower is better), qalign (Hugging Face cache) or another pyiqa
    # metric whose weights are in pyiqa's cache; None: no IQA (`brisque` is filled whatever is chosen)
    iqa_metric: str | None = "brisque"
    detect_every: int = 5  # run the face detector on every n-th frame (landmarks run on all)


@dataclass(frozen=True)
class ClipData:
    """One clip as the scorers see it: 25 fps frames, 16 kHz audio, shared face analysis."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # (N,) float32 mono in [-1, 1]
    fps: float = VIDEO_FPS  # frame rate of `frames`
    audio_sr: int = AUDIO_SR  # sample rate of `audio`
    landmarks: list[np.ndarray | None] = field(default_factory=list)  # per frame (468, 2) pixels, or None
    detections: list[list[faces.FaceBox]] = field(default_factory=list)  # faces on every detect_every-th frame
    settings: ScoringSettings = field(default_factory=ScoringSettings)  # weights and options

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def analyse_clip(
    frames: np.ndarray,
    audio: np.ndarray,
    fps: float = VIDEO_FPS,
    audio_sr: int = AUDIO_SR,
    settings: ScoringSettings | None = None,
    detections: list[list[faces.FaceBox]] | None = None,
) -> ClipData:
    """Run the shared face analysis once: face-mesh landmarks per frame, detections every n-th frame.

    ``detections`` already made on these frames (every ``detect_every``-th, e.g. while tracking
    the crop) are reused instead of running the detector again.
    """
    settings = settings or ScoringSettings()
    with faces.FaceMeshTracker() as tracker:
        landmarks = [tracker.landmarks(frame) for frame in frames]
    if detections is None:
        detections = [faces.detect_faces(frame) for frame in frames[:: max(1, settings.detect_every)]]
    return ClipData(
        frames=frames,
        audio=np.asarray(audio, dtype=np.float32),
        fps=fps,
        audio_sr=audio_sr,
        landmarks=landmarks,
        detections=detections,
        settings=settings,
    )


def nan_result(columns: tuple[str, ...], reason: str) -> dict[str, float | str]:
    """The result of a scorer that cannot run: NaN for each column and the reason in ``notes``."""
    return {**{name: NAN for name in columns}, "notes": reason}
