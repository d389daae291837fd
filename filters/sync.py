"""The lip-sync scorer of `fada curate`: SyncNet (LSE-D / LSE-C / offset) when weights are given,
and a weight-free proxy (the measurements are `pipelines.metrics.lip_sync`'s, shared with `fada eval`).

Two mouth signals are tried for the proxy and the one with the higher best-lag r is reported: the
mouth opening from the shared face-mesh landmarks (exact on sharp video; on blurred video the mesh
regresses to a mean shape) and the mouth darkness read from pixels (a local mean survives blur).
"""

from __future__ import annotations

import numpy as np

from filters.base import NAN, ClipData
from pipelines import faces
from pipelines.faces import interpolated_series
from pipelines.metrics.lip_sync import audio_rms_per_frame, mouth_darkness, mouth_track, proxy_offset, syncnet_columns

NAME = "sync"
COLUMNS = ("sync_offset", "sync_conf", "sync_dist", "sync_proxy_offset", "sync_proxy_conf")


def _proxy(clip: ClipData) -> dict[str, float | str]:
    opening = interpolated_series([None if p is None else faces.mouth_opening(p) for p in clip.landmarks])
    track = mouth_track(clip.landmarks)
    if opening is None or track is None:
        return {
            "sync_proxy_offset": NAN,
            "sync_proxy_conf": NAN,
            "notes": "sync proxy: face mesh found in < half of the frames",
        }
    rms = audio_rms_per_frame(clip.audio, clip.n_frames, clip.audio_sr, clip.fps)
    darkness = mouth_darkness(clip.frames, *track)
    candidates = [proxy_offset(signal, rms) for signal in (opening, darkness) if np.isfinite(signal).all()]
    offset, conf = max(candidates, key=lambda c: c[1] if np.isfinite(c[1]) else -np.inf, default=(NAN, NAN))
    result: dict[str, float | str] = {"sync_proxy_offset": offset, "sync_proxy_conf": conf}
    if not np.isfinite(conf):
        result["notes"] = "sync proxy: silent audio or still mouth, no correlation"
    return result


def score(clip: ClipData) -> dict[str, float | str]:
    """SyncNet columns (NaN without weights) and the weight-free proxy columns."""
    results = [syncnet_columns(clip.frames, clip.audio, clip.settings.syncnet_weights), _proxy(clip)]
    notes = "; ".join(str(r.pop("notes")) for r in results if "notes" in r)
    merged: dict[str, float | str] = {k: v for r in results for k, v in r.items()}
    return {**merged, "notes": notes} if notes else merged
