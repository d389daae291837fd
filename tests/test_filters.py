"""Curation scorers on synthetic inputs with a known answer, and the tiering rule."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch

from filters import image_quality, motion, sync, tiers
from filters.background import background_change
from filters.base import ClipData, ScoringSettings
from pipelines import faces
from pipelines.errors import UsageError
from pipelines.metrics import lip_sync
from pipelines.metrics import quality as metrics_quality

RNG_SEED = 1234


def envelope(n: int, seed: int = RNG_SEED) -> np.ndarray:
    """A smooth positive random signal, (n,)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((n, 1)), (1, 0), 2.0).ravel() + 0.05


def face_landmarks_with_opening(opening: float, shift: tuple[float, float] = (0.0, 0.0), angle: float = 0.0):
    """468 landmarks: a fixed random face, eyes 40 px apart, inner lips `opening` × 40 px apart."""
    rng = np.random.default_rng(RNG_SEED)
    points = rng.uniform(40, 120, (468, 2))
    points[faces.EYE_OUTER_CORNERS[0]] = (60, 70)
    points[faces.EYE_OUTER_CORNERS[1]] = (100, 70)
    points[1] = (80, 90)  # nose tip
    for upper, lower in faces.INNER_LIP_PAIRS:
        points[upper] = (80, 110)
        points[lower] = (80, 110 + 40 * opening)
    c, s = math.cos(angle), math.sin(angle)
    centre = points.mean(axis=0)
    return ((points - centre) @ np.array([[c, -s], [s, c]]).T + centre + shift).astype(np.float32)


@pytest.mark.parametrize("true_offset", [4, -6, 0])
def test_sync_proxy_finds_known_shift(true_offset):
    n = 100
    loudness = envelope(n + 40)
    rms_series = loudness[20 : 20 + n]
    mouth_series = loudness[20 - true_offset : 20 - true_offset + n]  # mouth[t] = rms[t - offset]
    offset, conf = lip_sync.proxy_offset(mouth_series, rms_series)
    assert offset == true_offset
    assert conf > 0.99


def test_sync_score_through_landmarks_and_audio():
    n, offset = 75, 3
    loudness = envelope(n + 20)
    audio_env, mouth_env = loudness[10 : 10 + n], loudness[10 - offset : 10 - offset + n]
    rng = np.random.default_rng(RNG_SEED)
    audio = (rng.standard_normal(n * 640) * np.repeat(audio_env, 640) * 0.2).astype(np.float32)
    clip = ClipData(
        frames=np.zeros((n, 8, 8, 3), np.uint8),
        audio=audio,
        landmarks=[face_landmarks_with_opening(0.3 * m) for m in mouth_env],
        settings=ScoringSettings(syncnet_weights=None, iqa_metric=None),
    )
    result = sync.score(clip)
    assert result["sync_proxy_offset"] == offset
    assert result["sync_proxy_conf"] > 0.9
    assert math.isnan(result["sync_offset"]) and "no --syncnet-weights" in result["notes"]


def test_syncnet_loads_weights_from_a_local_file(tmp_path):
    from syncnet_python import SyncNetModel

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetModel(num_layers_in_fc_layers=1024).state_dict(), weights)
    lip_sync.load_syncnet.cache_clear()
    rng = np.random.default_rng(RNG_SEED)
    frames = rng.integers(0, 255, (40, 64, 64, 3), dtype=np.uint8)
    audio = (rng.standard_normal(40 * 640) * 0.1).astype(np.float32)
    offset, conf, dist = lip_sync.syncnet_scores(frames, audio, weights)
    assert -15 <= offset <= 15 and float(offset).is_integer()
    assert conf >= 0 and dist > 0

    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a checkpoint")
    clip = ClipData(frames=frames, audio=audio, settings=ScoringSettings(syncnet_weights=broken, iqa_metric=None))
    result = sync.score(clip)
    assert math.isnan(result["sync_dist"]) and "syncnet:" in result["notes"]


def test_sharpness_falls_with_blur():
    rng = np.random.default_rng(RNG_SEED)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    values = [
        metrics_quality.laplacian_sharpness(np.stack([cv2.GaussianBlur(image, (0, 0), s) if s else image] * 3))
        for s in (0, 0.8, 1.5, 3.0)
    ]
    assert values == sorted(values, reverse=True)
    assert values[0] > 5 * values[-1]


def test_iqa_is_brisque_by_default_and_a_learned_metric_without_weights_is_nan(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    metrics_quality.pyiqa_weights_problem.cache_clear()
    frames = np.random.default_rng(RNG_SEED).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    audio = np.zeros(3200, np.float32)
    default = image_quality.score(ClipData(frames=frames, audio=audio))
    assert default["iqa_metric"] == "brisque" and default["iqa"] == default["brisque"] > 50  # noise: poor
    assert "notes" not in default
    for metric, reason in (("musiq", "not in pyiqa cache"), ("qalign", "not in the Hugging Face cache")):
        result = image_quality.score(ClipData(frames=frames, audio=audio, settings=ScoringSettings(iqa_metric=metric)))
        assert math.isnan(result["iqa"]) and result["iqa_metric"] == metric, metric
        assert result["notes"].startswith("iqa: ") and reason in result["notes"] and str(tmp_path) in result["notes"]
        assert result["brisque"] == default["brisque"]  # BRISQUE whatever the iqa column holds
    metrics_quality.pyiqa_weights_problem.cache_clear()
    flat = image_quality.score(ClipData(frames=np.full((5, 32, 32, 3), 128, np.uint8), audio=audio))
    assert flat["sharpness"] == 0.0 and math.isnan(flat["brisque"])  # no contrast: nothing to measure


def test_iqa_thresholds_must_follow_the_metric_direction():
    from pipelines.curate import CurateConfig

    lower_better = tiers.Thresholds(lenient=tiers.TierChecks(max_iqa=40.0))
    CurateConfig(thresholds=lower_better).validate()  # brisque (the default): lower is better
    with pytest.raises(UsageError, match=r"\[strict\] min_iqa: `iqa_metric` brisque is lower-is-better; use max_iqa"):
        CurateConfig(thresholds=tiers.Thresholds(strict=tiers.TierChecks(min_iqa=20.0))).validate()
    with pytest.raises(UsageError, match="qalign is higher-is-better; use min_iqa"):
        CurateConfig(thresholds=lower_better, scoring=ScoringSettings(iqa_metric="qalign")).validate()
    checks = dataclasses.replace(tiers.TierChecks(**{name: None for name in tiers.CHECK_COLUMNS}), max_iqa=40.0)
    assert tiers.first_failure({"iqa": 55.0}, checks) == "iqa 55 > 40"
    assert tiers.first_failure({"iqa": 12.0}, checks) is None
    assert tiers.first_failure({"iqa": math.nan}, checks) is None  # no IQA: skipped


def test_background_instability_higher_with_flicker_and_noise_separated():
    rng = np.random.default_rng(RNG_SEED)
    base = rng.integers(60, 200, (1, 48, 48, 3)).astype(np.float32)
    masks = [np.pad(np.ones((16, 16), np.float32), 16)] * 20  # the person in the centre
    steady = np.repeat(base, 20, axis=0).astype(np.uint8)
    flicker = np.clip(base * rng.uniform(0.8, 1.2, (20, 1, 1, 1)), 0, 255).astype(np.uint8)
    noisy = np.clip(base + rng.normal(0, 8, (20, 48, 48, 3)), 0, 255).astype(np.uint8)
    steady_score, flicker_score, noisy_score = (background_change(f, masks) for f in (steady, flicker, noisy))
    assert steady_score == (0.0, 0.0)
    assert flicker_score[0] > 0.02
    assert noisy_score[1] > 3.0 and flicker_score[1] < noisy_score[1]


def textured_face(side: int = 160, seed: int = RNG_SEED) -> np.ndarray:
    """An RGB uint8 (side, side, 3) image of smooth random texture: something ECC can lock onto."""
    rng = np.random.default_rng(seed)
    grey = cv2.GaussianBlur(rng.uniform(0, 255, (side, side)).astype(np.float32), (0, 0), 3.0)
    grey = cv2.normalize(grey, None, 30, 225, cv2.NORM_MINMAX)
    return np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)


def moved(image: np.ndarray, shift: tuple[float, float], angle_deg: float = 0.0) -> np.ndarray:
    side = image.shape[0]
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle_deg, 1.0)
    matrix[:, 2] += shift
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def jittered_landmarks(n: int, pixels: float) -> list[np.ndarray]:
    """The test face's landmarks (eyes 40 px apart) with independent per-frame noise, as on a blurred face."""
    rng = np.random.default_rng(RNG_SEED)
    return [face_landmarks_with_opening(0.2) + rng.normal(0, pixels, (468, 2)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("blur", [0.0, 3.0])
def test_head_motion_of_a_still_image_is_zero_whatever_the_landmark_jitter(blur):
    image = textured_face()
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    frames = np.stack([image] * 40)
    assert motion.head_motion(frames, jittered_landmarks(40, 3.0)) < 1e-3
    assert math.isnan(motion.head_motion(frames, [None] * 40))


@pytest.mark.parametrize("blur", [0.0, 3.0])
def test_head_motion_measures_a_known_translation_and_rotation(blur):
    image, t = textured_face(), np.arange(50)
    shift_x = 4.0 * np.sin(0.2 * t)  # pixels; eye distance is 40 px
    translated = np.stack([moved(image, (x, 0.0)) for x in shift_x])
    turned = np.stack([moved(image, (x, 0.0), 3.0 * np.sin(0.15 * i)) for i, x in enumerate(shift_x)])
    if blur:
        translated = np.stack([cv2.GaussianBlur(f, (0, 0), blur) for f in translated])
        turned = np.stack([cv2.GaussianBlur(f, (0, 0), blur) for f in turned])
    landmarks = jittered_landmarks(50, 1.0)
    expected = np.abs(shift_x - shift_x.mean()).mean() / 40.0  # mean |tx - mean| in eye distances, ≈ 0.063
    assert motion.head_motion(translated, landmarks) == pytest.approx(expected, rel=0.2)
    assert motion.head_motion(turned, landmarks) > motion.head_motion(translated, landmarks) + 0.02


def mouth_clip(n: int, opening: np.ndarray, audio_env: np.ndarray, blur: float) -> ClipData:
    """A 96 px grey face with a dark elliptic mouth opening by ``opening[t]`` (0..1) and noisy audio.

    The landmarks sit on the mouth with 2 px jitter, and their inner-lip gap is random, as a face
    mesh on a blurred face: only the pixels carry the speech.
    """
    rng = np.random.default_rng(RNG_SEED)
    frames = np.full((n, 96, 96, 3), 180, np.uint8)
    for frame, o in zip(frames, opening, strict=True):
        cv2.ellipse(frame, (48, 64), (12, max(1, int(round(1 + 9 * o)))), 0, 0, 360, (40, 25, 30), -1)
    if blur:
        frames = np.stack([cv2.GaussianBlur(f, (0, 0), blur) for f in frames])
    landmarks = []
    for _ in range(n):
        points = np.zeros((468, 2), np.float32)
        points[faces.EYE_OUTER_CORNERS[0]], points[faces.EYE_OUTER_CORNERS[1]] = (28, 36), (68, 36)
        points[list(lip_sync.LIP_POINTS)] = (48, 64) + rng.normal(0, 2.0, (len(lip_sync.LIP_POINTS), 2))
        landmarks.append(points)
    audio = (rng.standard_normal(n * 640) * np.repeat(audio_env, 640) * 0.2).astype(np.float32)
    return ClipData(frames=frames, audio=audio, landmarks=landmarks, settings=ScoringSettings(iqa_metric=None))


@pytest.mark.parametrize(("true_offset", "blur"), [(3, 0.0), (3, 3.0), (-5, 3.0), (0, 4.0)])
def test_sync_proxy_finds_known_lag_from_mouth_darkness_also_after_blur(true_offset, blur):
    n = 100
    loudness = envelope(n + 40)
    audio_env = loudness[20 : 20 + n]
    opening = loudness[20 - true_offset : 20 - true_offset + n]  # mouth[t] = audio[t - offset]
    opening = (opening - opening.min()) / np.ptp(opening)
    clip = mouth_clip(n, opening, audio_env, blur)
    track = lip_sync.mouth_track(clip.landmarks)
    darkness = lip_sync.mouth_darkness(clip.frames, *track)
    assert np.corrcoef(darkness, opening)[0, 1] > 0.95
    result = sync.score(clip)
    assert result["sync_proxy_offset"] == true_offset
    assert result["sync_proxy_conf"] > 0.85


def test_mouth_darkness_ignores_overall_brightness():
    n = 30
    opening = np.linspace(0, 1, n)
    clip = mouth_clip(n, opening, np.ones(n), 0.0)
    track = lip_sync.mouth_track(clip.landmarks)
    gain = np.where(np.arange(n) % 2, 0.6, 1.0)[:, None, None, None]  # flicker of the whole frame
    flickering = (clip.frames * gain).astype(np.uint8)
    steady, flicker = lip_sync.mouth_darkness(clip.frames, *track), lip_sync.mouth_darkness(flickering, *track)
    assert np.abs(flicker - steady).max() < 0.02
    assert steady[-1] > steady[0] + 0.2
    assert lip_sync.mouth_track([None] * n) is None


def test_tiers_a_is_subset_of_b_and_first_reason_recorded():
    loose_strict = tiers.Thresholds(
        strict=tiers.TierChecks(min_face_frac=0.5),  # looser than lenient: A must still pass lenient
        lenient=tiers.TierChecks(min_face_frac=0.9),
    )
    good = {
        "face_multi_frac": 0.0, "face_frac": 1.0, "face_size": 0.6, "sync_proxy_offset": 0.0,
        "sync_proxy_conf": 0.9, "motion_mouth": 0.02, "motion_head": 0.03, "sharpness": 300.0,
        "bg_instability": 0.001, "bg_noise": 0.0, "sync_offset": math.nan, "iqa": math.nan,
    }  # fmt: skip
    assert tiers.assign_tier(good, tiers.Thresholds()) == ("A", "")
    assert tiers.assign_tier({**good, "face_frac": 0.7}, loose_strict) == ("reject", "face_frac 0.7 < 0.9")
    both_bad = {**good, "face_frac": 0.1, "sharpness": 1.0}
    tier, reason = tiers.assign_tier(both_bad, tiers.Thresholds())
    assert tier == "reject" and reason.startswith("face_frac")
    tier, reason = tiers.assign_tier({**good, "sync_proxy_offset": -3.0}, tiers.Thresholds())
    assert (tier, reason) == ("B", "|sync_proxy_offset| 3 > 1")
    assert tiers.assign_tier({**good, "face_frac": math.nan}, tiers.Thresholds())[1] == "face_frac unavailable"
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(200):  # random scores: every A clip passes every lenient check
        scores = {k: (v if math.isnan(v) else v * rng.uniform(0.3, 3.0)) for k, v in good.items()}
        if tiers.assign_tier(scores, loose_strict)[0] == "A":
            assert tiers.first_failure(scores, loose_strict.lenient) is None


def test_thresholds_files(tmp_path):
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("strict:\n  min_face_frac: 0.99\nlenient:\n  max_motion_head: null\n")
    loaded = tiers.load_thresholds(yaml_file)
    assert loaded.strict.min_face_frac == 0.99 and loaded.lenient.max_motion_head is None
    assert loaded.lenient.min_face_frac == tiers.TierChecks().min_face_frac
    toml_file = tmp_path / "t.toml"
    toml_file.write_text("[lenient]\nmin_sharpness = 5\n")
    assert tiers.load_thresholds(toml_file).lenient.min_sharpness == 5.0
    written = tmp_path / "out.yaml"
    tiers.write_thresholds(loaded, written)
    assert tiers.load_thresholds(written) == loaded
    bad = tmp_path / "bad.yaml"
    bad.write_text("strict:\n  min_face_fraction: 0.9\n")
    with pytest.raises(UsageError, match="unknown threshold 'min_face_fraction'"):
        tiers.load_thresholds(bad)
    bad.write_text("medium:\n  min_face_frac: 0.9\n")
    with pytest.raises(UsageError, match="medium"):
        tiers.load_thresholds(bad)


def test_face_counts_ignore_weak_small_second_detections():
    from filters import face

    main = faces.FaceBox(10, 10, 60, 60, 0.9)
    weak = faces.FaceBox(70, 70, 90, 90, 0.55)  # a face-like pattern on clothes
    person = faces.FaceBox(70, 10, 115, 55, 0.85)  # a second person
    detections = [[main], [main, weak], [main, person], []]
    clip = ClipData(
        frames=np.zeros((4, 100, 100, 3), np.uint8), audio=np.zeros(2560, np.float32), detections=detections
    )
    result = face.score(clip)
    assert result == {"face_frac": 0.5, "face_multi_frac": 0.25, "face_size": 0.5}
