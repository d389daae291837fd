"""`fada train-teacher` on real demo clips at the tiny preset: training, exact resume, 2 processes, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import launch_two_processes
from safetensors.torch import load_file
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines.checkpoint import load_checkpoint_info, save_checkpoint
from pipelines.manifest import read_manifest, write_manifest
from pipelines.model import FadaModel
from pipelines.model_config import get_preset

runner = CliRunner()
COMPONENTS = ("reference_unet", "denoising_unet", "temporal_layers", "audio_projection")
TINY = ["--preset", "tiny", "--batch-size", "1", "--ema", "0.9", "--device", "cpu", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def straight_run(manifest, tmp_path_factory) -> Path:
    """2 uninterrupted steps (checkpoint after each)."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), "--steps", "2", *TINY]
    result = runner.invoke(app, [*args, "--checkpoint-every", "1", "--json"])
    assert result.exit_code == 0, result.output
    return out


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name in COMPONENTS
        for key, value in load_file(checkpoint / name / "diffusion_pytorch_model.safetensors").items()
    }


def log_rows(checkpoint: Path) -> list[dict]:
    with (checkpoint / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_two_steps_change_weights_and_give_finite_losses(straight_run):
    info = load_checkpoint_info(straight_run, expect_stage="teacher")
    assert info.step == 2 and info.mode == "teacher" and info.manifest_hash
    assert info.config["model"]["preset"] == "tiny" and info.config["train"]["ema"] == 0.9
    rows = log_rows(straight_run)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert list((straight_run / "tb").glob("events.out.tfevents.*"))
    torch.manual_seed(3)  # the run's seed: the same initial weights
    initial = {
        f"{n}.{k}": v
        for n, part in FadaModel.from_config(get_preset("tiny")).components().items()
        for k, v in part.state_dict().items()
    }
    trained = weights(straight_run)
    changed = [k for k, v in trained.items() if not torch.equal(v, initial[k])]
    assert any(k.startswith("denoising_unet.") for k in changed)
    assert any(k.startswith("audio_projection.") for k in changed)


def test_resume_equals_uninterrupted(manifest, straight_run, tmp_path):
    out = tmp_path / "resumed"
    base = ["train-teacher", "--manifest", str(manifest), "--out", str(out), *TINY]
    first = runner.invoke(app, [*base, "--steps", "1"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*base, "--steps", "2"])  # an existing folder without --resume
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(
        app, ["train-teacher", "--manifest", str(manifest), "--out", str(out), "--resume", "--steps", "2", "--json"]
    )
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["steps"] == 2 and summary["steps_this_run"] == 1
    assert [r["loss"] for r in log_rows(out)] == [r["loss"] for r in log_rows(straight_run)]
    expected, got = weights(straight_run), weights(out)
    assert expected.keys() == got.keys()
    # losses are bit-identical; weights agree to float32 rounding (CPU backward kernels may sum in another
    # order in a fresh process); a resume that lost optimizer/EMA state would be off by ~lr = 1e-4
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) < 1e-6
    assert summary["final_loss"] == float(log_rows(straight_run)[-1]["loss"])


@pytest.mark.slow
def test_two_process_accelerate_run(manifest, tmp_path):
    out = tmp_path / "ddp"
    done = launch_two_processes("train-teacher", "--manifest", str(manifest), "--out", str(out), "--steps", "2", *TINY,
                                "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2 and summaries[0]["steps"] == 2
    assert load_checkpoint_info(out, expect_stage="teacher").step == 2
    assert all(math.isfinite(float(r["loss"])) for r in log_rows(out))


def run_cli(*args: str):
    result = runner.invoke(app, ["train-teacher", *args, *TINY, "--steps", "1"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result, lines


def test_manifest_without_tier_a_clips(manifest, tmp_path):
    df = read_manifest(manifest)
    df["tier"] = ["B", "reject", "B"]
    bad = manifest.parent / "tier_b_only.parquet"
    write_manifest(df, bad, "test")
    result, lines = run_cli("--manifest", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and len(lines) == 1
    assert "no tier-A clips" in lines[0] and "B (2), reject (1)" in lines[0] and "fada curate" in lines[0]


def test_manifest_missing_a_column(manifest, tmp_path):
    df = read_manifest(manifest).drop(columns=["tier"])
    bad = manifest.parent / "no_tier.parquet"
    write_manifest(df, bad, "test")
    result, lines = run_cli("--manifest", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and len(lines) == 1
    assert "missing column 'tier'" in lines[0] and "fada curate" in lines[0]


def test_unreadable_clip(manifest, tmp_path):
    df = read_manifest(manifest)
    (manifest.parent / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    df.loc[1, "video_path"] = "clips/broken.mp4"
    bad = manifest.parent / "broken.parquet"
    write_manifest(df, bad, "test")
    result, lines = run_cli("--manifest", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and len(lines) == 1
    assert df.loc[1, "clip_id"] in lines[0] and "broken.mp4" in lines[0]


def test_resume_from_a_student_checkpoint(manifest, tmp_path):
    student = tmp_path / "student"
    save_checkpoint(student, stage="student", mode="fast", config={}, components={}, step=5)
    result = runner.invoke(
        app, ["train-teacher", "--manifest", str(manifest), "--out", str(student), "--resume", "--quiet"]
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1
    assert "student checkpoint" in lines[0] and "fada train-teacher" in lines[0]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["train-teacher", "--manifest", str(manifest), "--out", str(foreign), "--resume"])
    assert result.exit_code == 1 and "not a fada checkpoint" in result.stderr
