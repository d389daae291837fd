"""`fada curate` end to end on real mp4s: tiers, resume, corrupt and audio-less inputs, cuts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fada_cli.main import app
from filters.base import ScoringSettings
from pipelines import curate, media
from pipelines.demo_data import DemoDataConfig, generate_demo_data
from pipelines.manifest import KNOWN_COLUMNS, REQUIRED_COLUMNS, read_manifest

runner = CliRunner()
CURATE_ARGS = ["--size", "64", "--iqa-metric", "none", "--json", "--quiet"]


@pytest.fixture(scope="module")
def raw_videos(tmp_path_factory):
    """Three demo talking heads (96 px, 2.2 s), a corrupt mp4 and a video without audio."""
    root = tmp_path_factory.mktemp("curate")
    generate_demo_data(root / "demo", DemoDataConfig(clips=3, size=96, seconds=2.2, seed=0), quiet=True)
    raw = root / "raw"
    shutil.copytree(root / "demo" / "clips", raw / "talk")
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    frames = np.random.default_rng(0).integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
    media.write_video(raw / "silent.mp4", frames)
    return root, raw


@pytest.fixture(scope="module")
def interrupted_then_resumed(raw_videos):
    """Run 1 on one talking clip + the bad files; run 2 with --resume on the whole folder."""
    root, raw = raw_videos
    out = root / "out"
    first_inputs = [str(raw / "talk" / "demo_0000.mp4"), str(raw / "broken.mp4"), str(raw / "silent.mp4")]
    first = runner.invoke(app, ["curate", *first_inputs, "--out", str(out), *CURATE_ARGS])
    first_manifest = pd.read_parquet(out / "manifest.parquet")
    second = runner.invoke(app, ["curate", str(raw), "--out", str(out), "--resume", *CURATE_ARGS])
    return out, first, first_manifest, second


def test_first_run_records_bad_inputs_as_rejected(interrupted_then_resumed):
    out, first, manifest, _ = interrupted_then_resumed
    assert first.exit_code == 0, first.output
    assert len(manifest) == 3
    by_source = {row.source.split("/")[-1]: row for row in manifest.itertuples()}
    assert by_source["broken.mp4"].tier == "reject"
    assert by_source["broken.mp4"].reject_reason.startswith("unreadable:")
    assert by_source["silent.mp4"].tier == "reject"
    assert by_source["silent.mp4"].reject_reason == "no audio track"
    summary = json.loads(first.stdout)
    assert summary["new_rows"] == 3 and sum(summary["tiers"].values()) == 3


def test_talking_clip_is_scored_and_passed_through(interrupted_then_resumed, raw_videos):
    out, _, manifest, _ = interrupted_then_resumed
    row = manifest[manifest.source.str.endswith("demo_0000.mp4")].iloc[0]
    assert row.tier == "A", row.tier_reason
    assert (row.width, row.height, row.n_frames) == (96, 96, 55)  # kept at its own size, not --size 64
    assert abs(row.sync_proxy_offset) <= 1 and row.sync_proxy_conf > 0.6
    assert row.face_frac == 1.0 and row.sharpness > 50
    assert (out / row.video_path).read_bytes() == (raw_videos[1] / "talk" / "demo_0000.mp4").read_bytes()
    assert "no --syncnet-weights" in row.notes and np.isnan(row.sync_dist)


def test_every_curate_column_is_declared_with_its_dtype(interrupted_then_resumed):
    _, _, manifest, _ = interrupted_then_resumed
    assert set(manifest.columns) <= set(KNOWN_COLUMNS), sorted(set(manifest.columns) - set(KNOWN_COLUMNS))
    for name in manifest.columns:
        assert str(manifest[name].dtype) == KNOWN_COLUMNS[name], name


def test_resume_adds_only_missing_clips(interrupted_then_resumed):
    out, _, first_manifest, second = interrupted_then_resumed
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["new_rows"] == 2 and summary["skipped_sources"] == 3
    manifest = read_manifest(out / "manifest.parquet")
    assert len(manifest) == 5 and manifest.clip_id.is_unique
    kept = manifest.set_index("clip_id").loc[first_manifest.clip_id, "tier"].tolist()
    assert kept == first_manifest.tier.tolist()
    for column in [*REQUIRED_COLUMNS, "sync_proxy_offset", "motion_head", "bg_instability", "tier", "reject_reason"]:
        assert column in manifest.columns
    metadata = manifest.attrs["fada"]
    assert metadata["producer"] == "fada curate" and "strict" in metadata["thresholds"]
    assert set(metadata["scorers"]) == {"face", "sync", "motion", "quality", "background"}
    assert (out / "thresholds.yaml").is_file()


def test_existing_manifest_needs_resume(interrupted_then_resumed, raw_videos):
    out = interrupted_then_resumed[0]
    result = runner.invoke(app, ["curate", str(raw_videos[1]), "--out", str(out), *CURATE_ARGS])
    assert result.exit_code == 2
    assert "--resume" in result.output


def test_thresholds_file_with_unknown_key_is_an_error(tmp_path, raw_videos):
    bad = tmp_path / "thresholds.yaml"
    bad.write_text("strict:\n  min_sharpnes: 10\n")
    result = runner.invoke(
        app, ["curate", str(raw_videos[1]), "--out", str(tmp_path / "o"), "--thresholds", str(bad), *CURATE_ARGS]
    )
    assert result.exit_code == 2
    assert "unknown threshold 'min_sharpnes'" in result.output


def test_shot_cuts_split_clips_and_ignore_flicker(tmp_path):
    rng = np.random.default_rng(7)
    scene_a = np.repeat(rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)
    scene_b = np.repeat(rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)
    two_shots = np.concatenate([np.repeat(scene_a, 30, axis=0), np.repeat(scene_b, 20, axis=0)])  # (50, 64, 64, 3)
    gains = rng.uniform(0.7, 1.3, (50, 1, 1, 1))
    flicker = np.clip(np.repeat(scene_a, 50, axis=0) * gains, 0, 255).astype(np.uint8)
    media.write_video(tmp_path / "two.mp4", two_shots)
    media.write_video(tmp_path / "flicker.mp4", flicker)
    config = curate.CurateConfig()
    assert curate.shot_cuts(tmp_path / "two.mp4", config) == [30]
    assert curate.shot_cuts(tmp_path / "flicker.mp4", config) == []
    planned = curate.plan_clips(300, 25.0, [30], 2.0, 10.0)  # 1.2 s shot dropped, 10.8 s shot halved
    assert np.allclose(planned, [(1.2, 6.6), (6.6, 12.0)])
    assert curate.plan_clips(40, 25.0, [], 2.0, 10.0) == []


def test_wide_video_is_cropped_around_the_face(raw_videos, tmp_path):
    source = raw_videos[1] / "talk" / "demo_0001.mp4"
    frames, _ = media.read_video(source)
    wide = np.pad(frames, ((0, 0), (0, 0), (96, 0), (0, 0)), mode="edge")  # (T, 96, 192, 3): face on the right
    media.write_video(tmp_path / "wide.mp4", wide, audio=media.read_audio(source))
    config = curate.CurateConfig(size=64, scoring=ScoringSettings(iqa_metric=None))
    (tmp_path / "clips").mkdir()
    rows = curate.process_source(tmp_path / "wide.mp4", tmp_path, config, frozenset())
    assert len(rows) == 1 and (rows[0]["width"], rows[0]["height"]) == (64, 64)
    clip, _ = media.read_video(tmp_path / rows[0]["video_path"])
    assert clip.shape == (55, 64, 64, 3)
    assert rows[0]["face_frac"] == 1.0 and rows[0]["face_size"] > 0.4
