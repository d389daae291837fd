"""Weight-free proxies of the learned metrics, named ``*_proxy`` and never substituted for them.

- ``e_fid_proxy``: a landmark expression descriptor. Face-mesh landmarks of every frame are aligned
  by a least-squares similarity transform (Umeyama, TPAMI 1991) to a canonical shape — the
  generalised Procrustes mean (Gower, Psychometrika 1975) of the reference videos' median shapes —
  which removes translation, in-plane rotation and scale; each video's median aligned shape is
  subtracted (identity removed, expression kept); a PCA fitted on the reference set's descriptors
  reduces them to K coefficients, and the Fréchet distance between the two sets' coefficients is
  the proxy (lower is better; 0 for identical sets). Out-of-plane head rotation is not removed and
  counts as expression.
  Where the mesh reads too few frames, the same proxy runs on mouth-window descriptors
  (`window_e_fid_proxy`, `pipelines.metrics.mouth_window`).
- ``sync_proxy`` (`sync_proxy`): a mouth signal against the audio RMS per frame, best Pearson r
  over ±15 frame lags (`lip_sync.proxy_offset`), by one of two routes: ``face mesh`` (mouth
  opening and mouth darkness on the mesh's lips, as curate's `filters.sync`) where the mesh reads
  at least half of the frames, else ``mouth window`` (mouth darkness in a window found once and
  followed, `pipelines.metrics.mouth_window`). The best r over 31 lags of a 3-s clip is about
  0.2–0.5 for audio that has nothing to do with the video, so the score is r above chance:
  r minus the mean best r of the same mouth signal against three surrogates of the same audio
  (time-reversed, circularly shifted by half the clip, both), which keep its level and rhythm but
  not its timing.
- ``sharpness``: `quality.laplacian_sharpness` on every `FRAME_STEP`-th frame (not an IQA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import faces
from pipelines.faces import interpolated_series
from pipelines.metrics import lip_sync, mouth_window, quality
from pipelines.metrics.frechet import frechet_distance_of_features
from pipelines.metrics.lip_sync import NAN

E_FID_PROXY_EXTRACTOR = "face-mesh expression pca (weight-free)"
E_FID_WINDOW_EXTRACTOR = "mouth-window pixel pca (weight-free)"
SYNC_PROXY_EXTRACTOR = "mouth/audio-rms lag correlation above chance"
SYNC_LAG_EXTRACTOR = "mouth/audio-rms lag correlation"  # the raw best-lag r and its lag
SHARPNESS_EXTRACTOR = "laplacian sharpness"
MESH_ROUTE, WINDOW_ROUTE = "face mesh", "mouth window"  # the routes of the sync and E-FID proxies


def _normalised(shape: np.ndarray) -> np.ndarray:
    """Centred at the origin with unit Frobenius norm, ``(P, 2)``."""
    centred = shape - shape.mean(axis=0)
    return centred / max(np.linalg.norm(centred), 1e-12)


def similarity_align(shape: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``shape`` ``(P, 2)`` mapped by the similarity s·R·x + t closest to ``target`` in least squares.

    Umeyama 1991, Eqs. 40–42: with the centred point sets X, Y and the SVD U D Vᵀ of YᵀX / P,
    R = U S Vᵀ (S = diag(1, det(U Vᵀ)), no reflection), s = tr(D S) / σ²_X, t = μ_Y − s R μ_X.
    """
    mu_x, mu_y = shape.mean(axis=0), target.mean(axis=0)
    x, y = shape - mu_x, target - mu_y
    u, d, vt = np.linalg.svd(y.T @ x / len(shape))
    s_fix = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ s_fix @ vt
    scale = np.trace(np.diag(d) @ s_fix) / max((x**2).sum() / len(shape), 1e-12)
    return scale * x @ rotation.T + mu_y


def canonical_shape(shapes: list[np.ndarray], iterations: int = 10) -> np.ndarray:
    """Generalised Procrustes mean of ``(P, 2)`` shapes, centred, unit norm."""
    mean = _normalised(np.asarray(shapes[0], np.float64))
    for _ in range(iterations):
        aligned = [similarity_align(np.asarray(s, np.float64), mean) for s in shapes]
        mean = _normalised(np.mean(aligned, axis=0))
    return mean


def expression_descriptors(landmarks: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """``(T, P, 2)`` landmarks of one video → ``(T, 2P)``: aligned to ``canonical``, video median removed."""
    aligned = np.stack([similarity_align(np.asarray(frame, np.float64), canonical) for frame in landmarks])
    residual = aligned - np.median(aligned, axis=0)  # (T, P, 2): identity (the video's median face) removed
    return residual.reshape(len(landmarks), -1)


@dataclass(frozen=True)
class ExpressionPCA:
    """PCA of expression descriptors, fitted on the reference set."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D), rows orthonormal, by decreasing variance

    @classmethod
    def fit(cls, descriptors: np.ndarray, n_components: int) -> ExpressionPCA:
        mean = descriptors.mean(axis=0)
        _, _, vt = np.linalg.svd(descriptors - mean, full_matrices=False)  # rows of vt: principal axes
        return cls(mean=mean, components=vt[:n_components])

    def transform(self, descriptors: np.ndarray) -> np.ndarray:
        return (descriptors - self.mean) @ self.components.T  # (N, K)


@dataclass(frozen=True)
class EFidProxy:
    value: float  # Fréchet distance of the PCA coefficients
    n_generated: int  # generated frames used
    n_reference: int  # reference frames used
    n_components: int  # K


def e_fid_proxy(generated: list[np.ndarray], reference: list[np.ndarray], n_components: int = 16) -> EFidProxy:
    """E-FID proxy between two lists of per-video ``(T, P, 2)`` landmark arrays (frames with a face)."""
    generated = [v for v in generated if len(v) >= 2]
    reference = [v for v in reference if len(v) >= 2]
    if not generated or not reference:
        raise ValueError("need at least one video with >= 2 face-mesh frames in each set")
    canonical = canonical_shape([np.median(v, axis=0) for v in reference])
    ref = np.concatenate([expression_descriptors(v, canonical) for v in reference])  # (N_r, 2P)
    gen = np.concatenate([expression_descriptors(v, canonical) for v in generated])  # (N_g, 2P)
    return _efid_of_descriptors(gen, ref, n_components)


def window_e_fid_proxy(generated: list[np.ndarray], reference: list[np.ndarray], n_components: int = 16) -> EFidProxy:
    """E-FID proxy between two lists of per-video ``(T, D)`` mouth-window descriptors."""
    generated = [v for v in generated if len(v) >= 2]
    reference = [v for v in reference if len(v) >= 2]
    if not generated or not reference:
        raise ValueError("need at least one video with a mouth window in each set")
    ref, gen = np.concatenate(reference), np.concatenate(generated)  # (N_r, D), (N_g, D)
    return _efid_of_descriptors(gen, ref, n_components)


def chance_r(mouth: np.ndarray, rms: np.ndarray) -> float:
    """Mean best-lag r of ``mouth`` against surrogates of ``rms`` (reversed, half-rolled, both)."""
    half = len(rms) // 2
    surrogates = (rms[::-1], np.roll(rms, half), np.roll(rms[::-1], half))
    values = [lip_sync.proxy_offset(mouth, s)[1] for s in surrogates]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else NAN


def _best_signal(signals: list[np.ndarray], rms: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(signal, offset, r) of the signal with the highest best-lag r, or None."""
    scored = [(s, *lip_sync.proxy_offset(s, rms)) for s in signals if np.isfinite(s).all()]
    scored = [item for item in scored if np.isfinite(item[2])]
    return max(scored, key=lambda item: item[2]) if scored else None


def sync_proxy(frames: np.ndarray, audio: np.ndarray, fps: float, audio_sr: int,
               landmarks: list[np.ndarray | None], anchor: mouth_window.MouthAnchor | None) -> dict:  # fmt: skip
    """Per-video sync proxy columns: ``sync_proxy_offset`` (frames, video lags audio when > 0),
    ``sync_proxy_r`` (best-lag r), ``sync_proxy_conf`` (r above chance), ``sync_proxy_route``,
    and ``notes`` where it could not run. ``anchor``: the mouth window for the window route."""
    result: dict = {"sync_proxy_offset": NAN, "sync_proxy_r": NAN, "sync_proxy_conf": NAN, "sync_proxy_route": ""}
    rms = lip_sync.audio_rms_per_frame(audio, len(frames), audio_sr, fps)
    if rms.std() < 1e-9:
        return {**result, "notes": "sync proxy: silent audio, nothing to follow"}
    track = lip_sync.mouth_track(landmarks)
    opening = interpolated_series([None if p is None else faces.mouth_opening(p) for p in landmarks])
    if track is not None and opening is not None:
        route, signals = MESH_ROUTE, [opening, lip_sync.mouth_darkness(frames, *track)]
    elif anchor is not None:
        centres = mouth_window.follow_mouth(frames, anchor)
        route, signals = WINDOW_ROUTE, [lip_sync.mouth_darkness(frames, centres, anchor.eye_distance)]
    else:
        return {**result, "notes": "sync proxy: no face found by the face mesh or the face detector"}
    best = _best_signal(signals, rms)
    if best is None:
        return {**result, "sync_proxy_route": route, "notes": "sync proxy: still mouth, no correlation"}
    signal, offset, r = best
    return {**result, "sync_proxy_offset": offset, "sync_proxy_r": r, "sync_proxy_conf": r - chance_r(signal, rms),
            "sync_proxy_route": route}  # fmt: skip


def syncnet_scores(frames: np.ndarray, audio: np.ndarray, weights: Path | None) -> dict[str, float | str]:
    """`lip_sync.syncnet_columns`: Sync-D / Sync-C / offset (NaN and a note without ``weights``)."""
    return lip_sync.syncnet_columns(frames, audio, weights)


def sharpness(frames: np.ndarray) -> float:
    """Median Laplacian-variance sharpness of every `FRAME_STEP`-th frame (higher = sharper)."""
    return quality.laplacian_sharpness(frames[:: quality.FRAME_STEP])


def _efid_of_descriptors(gen: np.ndarray, ref: np.ndarray, n_components: int) -> EFidProxy:
    """Fréchet distance of (N_g, D) and (N_r, D) descriptors in the reference's first k PCA components."""
    k = min(n_components, len(ref) - 1, ref.shape[1])
    if k < 1 or len(gen) < 2:
        raise ValueError(f"too few frames for the PCA ({len(gen)} generated, {len(ref)} reference)")
    pca = ExpressionPCA.fit(ref, k)
    value = frechet_distance_of_features(pca.transform(gen), pca.transform(ref))
    return EFidProxy(value=value, n_generated=len(gen), n_reference=len(ref), n_components=k)


def portrait_mouth_r(frames: np.ndarray, audio: np.ndarray, portrait: np.ndarray, fps: float = 25.0,
                     audio_sr: int = 16_000) -> float:  # fmt: skip
    """Mouth opening vs speech energy at lag 0 — the demo's lip-sync figure for a video generated from
    ``portrait`` (the square the model saw, any size).

    The mouth is found once, on the portrait (`mouth_window.locate_mouth`: face mesh, then face
    detector, on the portrait upscaled; else on the video's own stills), and its window stays there: the
    generated face is drawn where the portrait's face is. Each frame's darkness in that window
    (`lip_sync.mouth_darkness`: an open mouth is dark) is correlated with the speech's RMS in that
    frame (Pearson r, no lag search, so no chance floor to subtract); NaN where no face or no variation.
    Against silence or the same speech reversed in time, a model that follows the audio scores about 0.
    """
    anchor = mouth_window.locate_mouth(frames, portrait)
    rms = lip_sync.audio_rms_per_frame(audio, len(frames), audio_sr, fps)
    if anchor is None or rms.std() < 1e-9:
        return NAN
    darkness = lip_sync.mouth_darkness(frames, np.repeat(np.array(anchor.centre)[None], len(frames), 0),
                                   anchor.eye_distance)  # fmt: skip
    if not np.isfinite(darkness).all() or darkness.std() < 1e-9:
        return NAN
    return float(np.corrcoef(darkness, rms)[0, 1])
