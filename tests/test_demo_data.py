"""`fada demo-data`: determinism, ground truth and tiers, faces found, mouth follows audio, CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines import demo_data, faces
from pipelines.demo_data import DemoDataConfig, frame_rms, generate_demo_data, plan_clips, render_clip, tier_of
from pipelines.errors import MediaError, UsageError
from pipelines.manifest import REQUIRED_COLUMNS, read_manifest
from pipelines.media import probe_video, read_audio, read_video

SMALL = DemoDataConfig(clips=3, identities=3, size=96, seconds=2.0, seed=3)
TRUTH_COLUMNS = ["clip_id", "identity", "offset_frames", "motion_level", "blur_sigma", "noise_std", "bg_flicker"]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_data(out, SMALL, quiet=True)
    return out


def pearson_at_lag(video: np.ndarray, audio: np.ndarray, lag: int) -> float:
    """Pearson r of video[f] against audio[f - lag] (lag > 0: video lags audio)."""
    f = np.arange(max(0, lag), min(len(video), len(video) + lag))
    return float(np.corrcoef(video[f], audio[f - lag])[0, 1])


def mouth_openings(frames: np.ndarray) -> np.ndarray:
    with faces.FaceMeshTracker() as tracker:
        points = [tracker.landmarks(frame) for frame in frames]
    assert all(p is not None for p in points), "face mesh lost the face"
    return np.array([faces.mouth_opening(p) for p in points])


def test_same_seed_gives_identical_clips_and_other_seed_differs():
    small = DemoDataConfig(clips=3, identities=2, size=96, seconds=1.0, seed=11)
    assert plan_clips(small) == plan_clips(small)
    truth = plan_clips(small)[1]
    frames_a, audio_a = render_clip(small, 1, truth)
    frames_b, audio_b = render_clip(small, 1, truth)
    assert frames_a.shape == (25, 96, 96, 3) and frames_a.dtype == np.uint8
    assert audio_a.shape == (25 * 640,) and audio_a.dtype == np.float32
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(audio_a, audio_b)
    other = DemoDataConfig(clips=3, identities=2, size=96, seconds=1.0, seed=12)
    frames_c, audio_c = render_clip(other, 1, truth)
    assert not np.array_equal(audio_a, audio_c)
    assert not np.array_equal(frames_a, frames_c)


def test_default_plan_mixes_clean_mild_and_severe_clips():
    truth = pd.DataFrame(plan_clips(DemoDataConfig()))
    assert truth["clean"].sum() == 8
    assert set(truth["tier"]) == {"A", "B", "reject"}
    assert (truth["tier"] == "B").sum() > (truth["tier"] == "reject").sum()
    assert truth["identity"].nunique() == 4
    assert (truth["offset_frames"] > 0).any() and (truth["offset_frames"] < 0).any()
    for name in ("motion_level", "blur_sigma", "noise_std", "bg_flicker"):
        assert (truth.loc[~truth["clean"], name] > truth.loc[truth["clean"], name].max()).any(), name
    clean = truth[truth["clean"]]
    assert (clean[["offset_frames", "noise_std", "bg_flicker"]] == 0).all().all()


def test_every_clip_has_its_own_camera_softness_and_blur_defects_stand_apart():
    truth = pd.DataFrame(plan_clips(DemoDataConfig()))
    assert truth["blur_sigma"].nunique() == len(truth)  # no ties: sharpness can be ranked against it
    low, high = demo_data.CLEAN_BLUR
    blurred = truth["blur_sigma"] > high  # blur defects (main or second); everything else is camera softness
    assert ((truth["blur_sigma"] >= low) & (truth["blur_sigma"] <= high) | blurred).all()
    assert truth.loc[truth["clean"], "blur_sigma"].between(low, high).all()
    assert truth.loc[truth["clean"], "blur_sigma"].std() > 0.1
    mild_low = demo_data.DEFECT_RANGES["blur_sigma"][0][0]
    assert blurred.sum() >= 3 and (truth.loc[blurred, "blur_sigma"] >= mild_low).all()
    assert not truth.loc[blurred, "clean"].any()


def test_head_motion_rms_follows_motion_level_exactly():
    rng = np.random.default_rng(0)
    for n in (25, 75, 250):
        waves = [demo_data._smooth_wave(rng, n) for _ in range(20)]
        np.testing.assert_allclose([w.mean() for w in waves], 0, atol=1e-9)
        np.testing.assert_allclose([np.sqrt((w**2).mean()) for w in waves], 1, rtol=1e-9)
        # Smooth (at most 1 Hz): unit-RMS white noise would step ~1.1 per frame, a 1 Hz sinusoid 0.36.
        assert max(np.abs(np.diff(w)).mean() for w in waves) < 0.4
        assert max(np.abs(np.diff(w)).max() for w in waves) < 1.2
    # Two clips that differ only in motion_level: the rendered head moves in proportion to it.
    config = DemoDataConfig(clips=1, identities=1, size=96, seconds=2.0, seed=4)
    truth = plan_clips(config)[0]
    spread = {}
    for level in (1.0, 3.0):
        frames, _ = render_clip(config, 0, {**truth, "motion_level": level})
        centres = []
        for frame in frames[::5]:
            points = faces.face_landmarks(frame)
            assert points is not None
            centres.append(points.mean(axis=0))
        spread[level] = float(np.sqrt(((np.array(centres) - np.mean(centres, axis=0)) ** 2).sum(axis=1).mean()))
    assert 2.4 < spread[3.0] / spread[1.0] < 3.6, spread


def test_tier_rule():
    base = {"offset_frames": 0, "motion_level": 0.4, "blur_sigma": 0.6, "noise_std": 0.0, "bg_flicker": 0.0}
    assert tier_of({**base, "clean": True}) == ("A", "")
    assert tier_of({**base, "offset_frames": -3, "clean": False}) == ("B", "")
    tier, reason = tier_of({**base, "offset_frames": -7, "clean": False})
    assert tier == "reject" and "offset_frames" in reason and "7" in reason
    assert tier_of({**base, "blur_sigma": 3.0, "clean": False})[0] == "reject"


def test_dataset_files_manifest_and_truth(small_dataset):
    truth = pd.read_parquet(small_dataset / "truth.parquet")
    assert list(truth.columns[: len(TRUTH_COLUMNS)]) == TRUTH_COLUMNS and "clean" in truth.columns
    assert truth["clean"].dtype == bool and len(truth) == 3
    manifest = read_manifest(small_dataset / "manifest.parquet")
    assert set(REQUIRED_COLUMNS) | {"tier", "identity"} <= set(manifest.columns)
    assert manifest.attrs["fada"]["producer"] == "fada demo-data"
    merged = manifest.merge(truth, on="clip_id", suffixes=("", "_truth"))
    assert (merged["tier"] == merged["tier_truth"]).all()
    assert (merged.loc[merged["clean"], "tier"] == "A").all()
    for row in manifest.itertuples():
        info = probe_video(small_dataset / row.video_path)
        assert (info.fps, info.n_frames, info.width, info.height) == (25.0, 50, 96, 96)
        assert info.has_audio and row.n_frames == 50
    assert sorted(p.name for p in (small_dataset / "identities").iterdir()) == ["id0.png", "id1.png", "id2.png"]


def test_faces_detected_in_sampled_frames(small_dataset):
    found = total = 0
    for path in sorted((small_dataset / "clips").glob("*.mp4")):
        frames, _ = read_video(path)
        for frame in frames[::4]:
            found += bool(faces.detect_faces(frame))
            total += 1
    assert total == 39
    assert found / total >= 0.95


def test_mouth_opening_follows_audio_at_the_true_offset(tmp_path):
    config = DemoDataConfig(clips=1, identities=1, size=128, seconds=3.0, seed=5)
    generate_demo_data(tmp_path / "clean", config, quiet=True)
    path = tmp_path / "clean" / "clips" / "demo_0000.mp4"
    frames, _ = read_video(path)
    mouth, rms = mouth_openings(frames), frame_rms(read_audio(path))
    assert pearson_at_lag(mouth, rms, 0) > 0.7
    # The same clip rendered with video lagging audio by 4 frames peaks at lag +4, not 0.
    truth = {**plan_clips(config)[0], "offset_frames": 4}
    lagged, audio = render_clip(config, 0, truth)
    mouth = mouth_openings(lagged)
    lags = {lag: pearson_at_lag(mouth, frame_rms(audio), lag) for lag in range(-8, 9)}
    assert max(lags, key=lags.get) == 4
    assert lags[4] > 0.7 > lags[0]


def test_bad_config_values_raise_usage_errors(tmp_path):
    for bad in ({"clips": 0}, {"identities": 99}, {"size": 16}, {"seconds": 0.2}):
        with pytest.raises(UsageError):
            generate_demo_data(tmp_path / "x", DemoDataConfig(**bad), quiet=True)
    assert not (tmp_path / "x").exists()


def test_error_mid_way_leaves_no_output(tmp_path, monkeypatch):
    calls = []

    def failing_write(path, frames, **kwargs):
        calls.append(path)
        raise MediaError("disk full")

    monkeypatch.setattr(demo_data, "write_video", failing_write)
    with pytest.raises(MediaError):
        generate_demo_data(tmp_path / "out", DemoDataConfig(clips=2, identities=1, size=64, seconds=1.0), quiet=True)
    assert calls and list(tmp_path.iterdir()) == []


def run_cli(*args: str):
    from fada_cli.main import app

    return CliRunner().invoke(app, ["demo-data", *args])


def test_cli_help_shows_options_and_example():
    result = run_cli("--help")
    assert result.exit_code == 0
    for word in ("--clips", "--identities", "--size", "--seconds", "--seed", "--quiet", "Example"):
        assert word in result.output


def test_cli_bad_option_is_a_one_line_usage_error(tmp_path):
    result = run_cli(str(tmp_path / "out"), "--clips", "0")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--clips" in lines[0] and "0" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_foreign_folder_and_replaces_previous_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    result = run_cli(str(foreign), "--clips", "1", "--size", "64", "--seconds", "1", "--quiet")
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert (foreign / "keep.txt").read_text() == "mine"

    out = tmp_path / "data"
    args = ("--clips", "1", "--identities", "1", "--size", "64", "--seconds", "1", "--quiet")
    assert run_cli(str(out), *args).exit_code == 0
    result = run_cli(str(out), *args[:1], "2", *args[2:])
    assert result.exit_code == 0, result.output
    assert "wrote 2 clips" in result.stdout
    assert len(pd.read_parquet(out / "truth.parquet")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "foreign"]
