"""`fada curate` at scale: Parquet parts, a killed run resumed, failed sources, the Ray engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fada_cli.main import app
from filters.base import ScoringSettings
from pipelines import curate, media
from pipelines.demo_data import DemoDataConfig, generate_demo_data
from pipelines.manifest import read_manifest

runner = CliRunner()
CURATE_ARGS = ["--size", "64", "--iqa-metric", "none", "--json", "--quiet"]
TINY = curate.CurateConfig(size=64, scoring=ScoringSettings(iqa_metric=None))


@pytest.fixture(scope="module")
def raw_videos(tmp_path_factory):
    """Four demo talking heads (96 px, 2.2 s), a corrupt mp4 and a video without audio."""
    root = tmp_path_factory.mktemp("engines")
    generate_demo_data(root / "demo", DemoDataConfig(clips=4, size=96, seconds=2.2, seed=1), quiet=True)
    raw = root / "raw"
    shutil.copytree(root / "demo" / "clips", raw / "talk")
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    frames = np.random.default_rng(0).integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
    media.write_video(raw / "silent.mp4", frames)
    return raw


@pytest.fixture(scope="module")
def local_manifest(raw_videos, tmp_path_factory):
    """The local engine's manifest of the whole folder, the reference for the other runs."""
    out = tmp_path_factory.mktemp("local")
    result = runner.invoke(app, ["curate", str(raw_videos), "--out", str(out), *CURATE_ARGS])
    assert result.exit_code == 0, result.output
    assert not (out / curate.PARTS_FOLDER).exists(), "the parts were merged and removed"
    return read_manifest(out / "manifest.parquet")


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """A manifest without the columns that name the output folder, sorted by clip id."""
    return df.sort_values("clip_id").reset_index(drop=True)


def test_manifest_is_merged_from_parts_sorted_by_clip_id(local_manifest):
    assert len(local_manifest) == 6 and local_manifest.clip_id.is_unique
    assert local_manifest.clip_id.tolist() == sorted(local_manifest.clip_id)
    assert (local_manifest.tier != "reject").sum() >= 3
    reasons = dict(zip(local_manifest.source.str.rsplit("/", n=1).str[-1], local_manifest.reject_reason, strict=True))
    assert reasons["silent.mp4"] == "no audio track" and reasons["broken.mp4"].startswith("unreadable:")


def test_failed_source_becomes_a_rejected_row_and_the_run_goes_on(raw_videos, tmp_path, monkeypatch):
    real = curate.process_source

    def failing(source, *args):
        if source.name == "demo_0001.mp4":
            raise RuntimeError("decoder exploded\non two lines")
        return real(source, *args)

    monkeypatch.setattr(curate, "process_source", failing)
    summary = curate.run_curate([raw_videos / "talk"], tmp_path, TINY, quiet=True)
    manifest = read_manifest(summary.manifest)
    failed = manifest[manifest.source.str.endswith("demo_0001.mp4")]
    assert len(failed) == 1 and failed.iloc[0].tier == "reject"
    assert failed.iloc[0].reject_reason == "failed: RuntimeError: decoder exploded on two lines"
    assert failed.iloc[0].clip_id.endswith("-src")
    assert len(manifest) == 4 and summary.reasons["failed"] == 1


def test_killed_run_keeps_its_parts_and_resume_skips_them(raw_videos, local_manifest, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-c", "from fada_cli.main import main; main()", "curate", str(raw_videos)]
    process = subprocess.Popen([*command, "--out", str(out), *CURATE_ARGS], env=os.environ.copy())
    parts = out / curate.PARTS_FOLDER
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list(parts.glob("*.parquet"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = pd.concat([pd.read_parquet(p) for p in parts.glob("*.parquet")])
    assert 2 <= kept.source.nunique() < 6, "the run was not killed part-way"
    assert not (out / "manifest.parquet").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "clips").glob("*.mp4")}

    again = runner.invoke(app, ["curate", str(raw_videos), "--out", str(out), *CURATE_ARGS])
    assert again.exit_code == 2 and "--resume" in again.output  # an interrupted run is not overwritten
    resumed = runner.invoke(app, ["curate", str(raw_videos), "--out", str(out), "--resume", *CURATE_ARGS])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["skipped_sources"] == kept.source.nunique()
    assert summary["new_rows"] == 6 - len(kept)
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp, f"{path.name} was written again"
    manifest = read_manifest(out / "manifest.parquet")
    assert not parts.exists()
    pd.testing.assert_frame_equal(comparable(manifest), comparable(local_manifest))


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with 2 CPUs for the engine tests, shut down afterwards."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_gives_the_local_rows(local_ray, raw_videos, local_manifest, tmp_path):
    result = runner.invoke(
        app, ["curate", str(raw_videos), "--out", str(tmp_path), "--engine", "ray", "--workers", "2", *CURATE_ARGS]
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "manifest.parquet")
    pd.testing.assert_frame_equal(comparable(manifest), comparable(local_manifest))
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == sorted(
        os.path.basename(v) for v in local_manifest.video_path if v != curate.NO_FILE
    )


@pytest.mark.slow
def test_ray_worker_that_dies_gives_a_rejected_row(local_ray, raw_videos, tmp_path):
    from pipelines.curate_ray import iter_ray

    def dies_on_demo_0002(source, *args):  # shipped to the Ray workers by value
        if source.name == "demo_0002.mp4":
            os._exit(3)  # the worker process is gone, as after a segfault or an OOM kill
        return curate.curate_source(source, *args)

    (tmp_path / "clips").mkdir()
    sources = sorted((raw_videos / "talk").glob("*.mp4"))
    config = curate.CurateConfig(size=64, engine="ray", scoring=ScoringSettings(iqa_metric=None))
    results = dict(iter_ray(sources, tmp_path, config, {}, {}, dies_on_demo_0002, curate.failed_part))
    dead = results[raw_videos / "talk" / "demo_0002.mp4"]
    assert len(dead) == 1 and dead[0]["tier"] == "reject"
    assert dead[0]["reject_reason"].startswith("failed: ray worker: ")
    alive = [rows for source, rows in results.items() if source.name != "demo_0002.mp4"]
    assert len(alive) == 3 and all(rows[0]["video_path"] != curate.NO_FILE for rows in alive)
    assert len(list((tmp_path / curate.PARTS_FOLDER).glob("*.parquet"))) == 4


def test_engine_options_are_checked(raw_videos, tmp_path):
    result = runner.invoke(app, ["curate", str(raw_videos), "--out", str(tmp_path), "--engine", "spark", *CURATE_ARGS])
    assert result.exit_code == 2 and "--engine must be one of local, ray, got 'spark'" in result.output
    result = runner.invoke(
        app, ["curate", str(raw_videos), "--out", str(tmp_path), "--ray-address", "auto", *CURATE_ARGS]
    )
    assert result.exit_code == 2 and "--ray-address auto needs --engine ray" in result.output
