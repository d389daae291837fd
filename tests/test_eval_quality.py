"""What `fada eval` adds for generated videos: BRISQUE, Q-Align from the cache only, PIQE, full-reference
scores, the mouth-window route."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipelines.demo_data import DemoDataConfig, render_clip
from pipelines.faces import FaceMeshTracker
from pipelines.media import AUDIO_SR, VIDEO_FPS
from pipelines.metrics import brisque, mouth_window, proxies, quality

OFFSET = 3  # frames the mouth lags the speech in the test clip


def degrade(frames: np.ndarray, blur: float, noise: float, seed: int = 0) -> np.ndarray:
    """Gaussian blur (sigma px) and Gaussian noise (sigma in [0, 1]) on uint8 frames."""
    out = frames.astype(np.float32)
    if blur:
        out = np.stack([cv2.GaussianBlur(f, (0, 0), blur) for f in out])
    out = out + np.random.default_rng(seed).normal(0, 255 * noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg(frames: np.ndarray, level: int = 10) -> np.ndarray:
    """Each frame JPEG-encoded at quality ``level`` and decoded."""
    encoded = (cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, level])[1] for f in frames)
    return np.stack([cv2.imdecode(e, cv2.IMREAD_UNCHANGED) for e in encoded])


TRUTH = {"identity": "id0", "offset_frames": OFFSET, "motion_level": 0.4, "blur_sigma": 0.0, "noise_std": 0.0,
         "bg_flicker": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def talking_clip():
    """A 3-s, 64-px demo talking face whose mouth lags its speech by OFFSET frames: (frames, audio)."""
    return render_clip(DemoDataConfig(clips=1, identities=1, size=64, seconds=3.0, seed=2), 0, TRUTH)


# ---------------------------------------------------------------------------------------------
# image quality


@pytest.mark.parametrize("size", [64, 128])
def test_brisque_ranks_a_clean_face_above_its_degraded_versions_and_pure_noise_last(size, no_network):
    """At the frames' own size: the synthetic face as rendered beats it blurred (σ 1 px), with noise
    (σ 0.05 and 0.1), and JPEG-compressed (quality 10); pure noise is worst of all. Measured margins
    are wide (clean ≈ −2…−6, degraded 25–46, pure noise ≈ 87–89), so the test is not on a knife edge."""
    frames = render_clip(DemoDataConfig(clips=1, identities=1, size=size, seconds=1.0, seed=2), 0, TRUTH)[0][::5]
    pure = np.random.default_rng(1).integers(0, 256, frames.shape, dtype=np.uint8)
    degraded = {"blurred": degrade(frames, 1.0, 0), "noise 0.05": degrade(frames, 0, 0.05),
                "noise 0.1": degrade(frames, 0, 0.1), "jpeg 10": jpeg(frames)}  # fmt: skip
    clean, noise_only = brisque.brisque(frames), brisque.brisque(pure)
    scores = {name: brisque.brisque(version) for name, version in degraded.items()}
    assert all(clean < score < noise_only for score in scores.values()), (clean, scores, noise_only)
    assert quality.iqa_lower_better(quality.BRISQUE) and no_network == []


def test_brisque_equals_opencv_contrib_and_scores_the_image_at_its_own_size(talking_clip):
    """Same features and score as `cv2.quality.QualityBRISQUE` with the shipped model (OpenCV clips
    the score to [0, 100]); the image is scored as it is, never resized."""
    if not hasattr(cv2, "quality"):
        pytest.skip("this cv2 is not the opencv-contrib build (no cv2.quality to compare against)")
    frame = talking_clip[0][10]
    images = [frame, degrade(frame[None], 1.0, 0)[0], degrade(frame[None], 0, 0.1)[0], jpeg(frame[None])[0],
              cv2.resize(frame, (45, 37), interpolation=cv2.INTER_AREA)]  # fmt: skip
    model, ranges = str(brisque.MODEL_FILE), str(brisque.RANGE_FILE)
    for image in images:
        bgr = image[:, :, ::-1].copy()
        theirs = cv2.quality.QualityBRISQUE_compute(bgr, model, ranges)[0]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
        np.testing.assert_allclose(brisque.brisque_features(grey), cv2.quality.QualityBRISQUE_computeFeatures(bgr)[0],
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        assert min(max(brisque.brisque_score(image), 0.0), 100.0) == pytest.approx(theirs, abs=1e-3)
    # scored at its own size: the 64-px frame and its 2× upscale are different images and scores
    upscaled = cv2.resize(frame, (128, 128), interpolation=cv2.INTER_CUBIC)
    assert abs(brisque.brisque_score(upscaled) - brisque.brisque_score(frame)) > 1.0


def test_qalign_is_unavailable_with_an_empty_cache_and_found_in_a_complete_one(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    problem = quality.learned_iqa_problem("qalign")
    assert quality.QALIGN_REPO in problem and str(tmp_path) in problem and "hf download" in problem
    # a cache laid out as huggingface_hub writes it: refs/main → snapshots/<commit>/…
    commit = "0" * 40
    folder = tmp_path / "models--q-future--one-align"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert "no weight file" in quality.learned_iqa_problem("qalign")
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    weight_map = {"a": shards[0], "b": shards[1]}
    (snapshot / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (snapshot / shards[0]).write_bytes(b"")
    assert shards[1] in quality.learned_iqa_problem("qalign")  # an interrupted download: one shard missing
    (snapshot / shards[1]).write_bytes(b"")
    assert quality.learned_iqa_problem("qalign") is None
    assert no_network == []


def test_piqe_scores_clean_frames_better_than_blurred_and_noise_worst(talking_clip):
    """The relations PIQE keeps on >= 96 % of the demo clips of `bench/verify_eval.py`. Blur vs noise
    it does not order (it rates blur as worse than moderate noise, and noise of σ 0.05 as better
    than clean), so those pairs are not asserted."""
    frames = talking_clip[0][::5]
    pure = np.random.default_rng(1).integers(0, 256, frames.shape, dtype=np.uint8)
    clean, blurred, noisy, noise_only = (
        quality.weight_free_iqa(v) for v in (frames, degrade(frames, 1.0, 0), degrade(frames, 0, 0.1), pure)
    )
    assert quality.iqa_lower_better("piqe") and 0 <= clean <= 100
    assert clean < blurred and noisy < noise_only and clean < noise_only


def test_weight_free_iqa_refuses_metrics_that_need_weights():
    with pytest.raises(ValueError, match="not a weight-free pyiqa metric"):
        quality.weight_free_iqa(np.zeros((1, 32, 32, 3), np.uint8), "niqe")


def test_full_reference_of_a_video_against_itself_and_a_noisy_copy(talking_clip):
    frames = talking_clip[0][:10]
    same = quality.full_reference(frames, frames, ("psnr", "ssim"))
    assert same["ssim"] == pytest.approx(1.0, abs=1e-4) and same["psnr"] > 60
    noisy = quality.full_reference(degrade(frames, 0, 0.05), frames, ("psnr", "ssim"))
    assert 20 < noisy["psnr"] < 35 and noisy["ssim"] < 0.95
    # a reference at another size is resized to the generated frames' size
    larger = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_CUBIC) for f in frames])
    assert quality.full_reference(frames, larger, ("psnr",))["psnr"] > 25


def test_lpips_unavailable_without_its_weight_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() = $TORCH_HOME/hub (never set_dir:
    hub = tmp_path / "hub"  # it would pin the hub folder for every later test)
    assert Path(torch.hub.get_dir()) == hub
    problem = quality.lpips_weights_problem()
    assert problem is not None and quality.LPIPS_FILES[0] in problem and "not found" in problem
    (hub / "pyiqa").mkdir(parents=True)
    (hub / "checkpoints").mkdir()
    (hub / "pyiqa" / quality.LPIPS_FILES[0]).write_bytes(b"")
    assert quality.LPIPS_FILES[1] in quality.lpips_weights_problem()
    (hub / "checkpoints" / quality.LPIPS_FILES[1]).write_bytes(b"")
    assert quality.lpips_weights_problem() is None


# ---------------------------------------------------------------------------------------------
# the mouth-window route


def test_sync_proxy_takes_the_mouth_window_where_the_mesh_cannot_read(talking_clip):
    clean, audio = talking_clip
    frames = degrade(clean, 1.0, 0.1)  # 64 px, blurred, noisy: like a generated video
    with FaceMeshTracker() as tracker:
        landmarks = [tracker.landmarks(f) for f in frames]
    assert sum(p is not None for p in landmarks) < len(frames) // 2  # the mesh cannot read this clip
    anchor = mouth_window.locate_mouth(frames)
    assert anchor is not None and 5 < anchor.eye_distance < 40
    result = proxies.sync_proxy(frames, audio, VIDEO_FPS, AUDIO_SR, landmarks, anchor)
    assert result["sync_proxy_route"] == proxies.WINDOW_ROUTE and "notes" not in result
    assert abs(result["sync_proxy_offset"] - OFFSET) <= 1
    assert result["sync_proxy_r"] > 0.8 and result["sync_proxy_conf"] > 0.3
    # the same frames against speech of another timing, and against room-tone silence: chance level
    other = np.roll(audio, len(audio) // 2)[::-1].copy()
    shuffled = proxies.sync_proxy(frames, other, VIDEO_FPS, AUDIO_SR, landmarks, anchor)
    room = (1e-3 * np.random.default_rng(3).standard_normal(len(audio))).astype(np.float32)
    silence = proxies.sync_proxy(frames, room, VIDEO_FPS, AUDIO_SR, landmarks, anchor)
    assert shuffled["sync_proxy_conf"] < 0.2 and silence["sync_proxy_conf"] < 0.2
    # digital silence: nothing to follow, no score
    mute = proxies.sync_proxy(frames, np.zeros_like(audio), VIDEO_FPS, AUDIO_SR, landmarks, anchor)
    assert np.isnan(mute["sync_proxy_conf"]) and "silent audio" in mute["notes"]


def test_sync_proxy_keeps_the_face_mesh_where_it_reads(talking_clip):
    frames, audio = talking_clip
    large = np.stack([cv2.resize(f, (192, 192), interpolation=cv2.INTER_CUBIC) for f in frames])
    with FaceMeshTracker() as tracker:
        landmarks = [tracker.landmarks(f) for f in large]
    result = proxies.sync_proxy(large, audio, VIDEO_FPS, AUDIO_SR, landmarks, None)
    assert result["sync_proxy_route"] == proxies.MESH_ROUTE and abs(result["sync_proxy_offset"] - OFFSET) <= 1


def test_mouth_window_follows_a_moving_face(talking_clip):
    frames = talking_clip[0]
    anchor = mouth_window.locate_mouth(frames)
    shifted = np.stack([np.roll(f, (t % 7, -(t % 5)), axis=(0, 1)) for t, f in enumerate(frames)])  # (dy, dx)
    centres = mouth_window.follow_mouth(shifted, anchor)
    expected = np.array(anchor.centre) + np.stack([-(np.arange(len(frames)) % 5), np.arange(len(frames)) % 7], 1)
    assert np.abs(centres - expected).mean() < 1.5  # smoothing blurs the saw-tooth a little


def test_window_e_fid_proxy_zero_for_identical_sets_and_larger_for_a_still_mouth(talking_clip):
    frames = talking_clip[0]
    anchor = mouth_window.locate_mouth(frames)
    centres = mouth_window.follow_mouth(frames, anchor)
    talking = mouth_window.window_descriptors(frames, centres, anchor.eye_distance)
    still = mouth_window.window_descriptors(np.repeat(frames[:1], len(frames), 0) + 0, centres, anchor.eye_distance)
    still = still + np.random.default_rng(0).normal(0, 1e-3, still.shape)  # a frozen face, tiny jitter
    same = proxies.window_e_fid_proxy([talking], [talking], n_components=8)
    assert same.value == pytest.approx(0.0, abs=1e-9) and same.n_components == 8
    assert proxies.window_e_fid_proxy([still], [talking], n_components=8).value > 1e-3
