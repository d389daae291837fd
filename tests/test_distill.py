"""`fada distill` on real demo clips at the tiny preset: every ablation mode, logs, exact resume, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import launch_two_processes
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines import fada_math
from pipelines.checkpoint import load_checkpoint_info, save_checkpoint
from pipelines.distill import build_student_from_teacher
from pipelines.model import FadaModel
from pipelines.model_config import get_preset

runner = CliRunner()
FAST = ["--batch-size", "1", "--solver-steps", "5", "--device", "cpu", "--seed", "3", "--quiet", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("tiny"))
    out = tmp_path_factory.mktemp("ckpt") / "teacher"
    config = {"model": model.config.to_dict()}
    return save_checkpoint(out, stage="teacher", mode="teacher", config=config, components=model.components(), step=0)


def distill(teacher: Path, manifest: Path, out: Path, *extra: str):
    args = ["distill", "--teacher", str(teacher), "--manifest", str(manifest), "--tier", "B", "--out", str(out)]
    return runner.invoke(app, [*args, *FAST, *extra])


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def weights(checkpoint: Path, component: str = "denoising_unet") -> dict[str, torch.Tensor]:
    return load_file(checkpoint / component / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("conditioning", ["tokens", "layer", "time-embed"])
def test_new_student_equals_teacher(teacher, conditioning):
    model = FadaModel.from_checkpoint(teacher, expect_stage="teacher")
    student = build_student_from_teacher(model, conditioning)
    assert student.cfg_conditioning is not None
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 4, 3, 32, 32, generator=g)  # (B, F, C, h, w)
    reference = model.reference_features(torch.randn(2, 3, 32, 32, generator=g))
    tokens = model.audio_tokens(torch.randn(2, 4, 5, 64, generator=g))
    drop = torch.tensor([False, True])
    with torch.no_grad():
        expected = model.denoise(noisy, torch.tensor([999.0, 250.0]), tokens, reference, drop, drop)
        scales = (torch.tensor([6.5, 1.0]), torch.tensor([2.0, 3.0]))
        got = student.denoise(noisy, torch.tensor([999.0, 250.0]), tokens, reference, drop, drop, scales)
    assert torch.equal(expected, got)


ABLATIONS = [
    ("fast", "tokens", "adaptive"),
    ("fast", "tokens", "adaptive-unlimited"),
    ("fast", "tokens", "fixed-0"),
    ("fast", "tokens", "fixed-0.5"),
    ("fast", "none", "adaptive"),
    ("fast", "time-embed", "adaptive"),
    ("fast", "layer", "adaptive"),
    ("balanced", "none", "adaptive"),
]


@pytest.mark.parametrize(("mode", "conditioning", "gt_weight"), ABLATIONS)
def test_two_steps_in_every_ablation_mode(teacher, manifest, tmp_path, mode, conditioning, gt_weight):
    out = tmp_path / "student"
    options = ["--mode", mode, "--cfg-conditioning", conditioning, "--gt-weight", gt_weight, "--steps", "2"]
    result = distill(teacher, manifest, out, *options, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mode"] == mode and summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    info = load_checkpoint_info(out, expect_stage="student")
    assert (info.mode, info.step, info.config["model"]["cfg_conditioning"]) == (mode, 2, conditioning)
    assert info.teacher_hash == summary["teacher_hash"] and info.config["train"]["gt_weight"] == gt_weight
    assert ("cfg_conditioning" in info.components) == (conditioning != "none")
    steps = rows(out / "train_log.csv")
    assert [int(r["step"]) for r in steps] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in steps)
    before, after = weights(teacher), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the student moved off the teacher
    # per-sample R and W, with W exactly the selected rule of Eqs. 7-8
    samples = rows(out / "supervision.csv")
    assert len(samples) == 2  # 2 steps × batch 1
    for sample in samples:
        ratio, weight = float(sample["ratio"]), float(sample["weight"])
        assert ratio == pytest.approx(float(sample["loss_gt"]) / float(sample["loss_distill"]), rel=1e-5)
        assert int(sample["window"]) == fada_math.window_of(float(sample["t"]))
        assert weight == pytest.approx(fada_math.supervision_weight(ratio, gt_weight), rel=1e-5, abs=1e-9)
        assert math.isnan(float(sample["cfg_audio"])) == (mode == "balanced")
        if mode == "fast":
            assert 1 <= float(sample["cfg_audio"]) <= 10 and 1 <= float(sample["cfg_ref"]) <= 3
    if gt_weight.startswith("fixed"):
        assert {float(s["weight"]) for s in samples} == {float(gt_weight.removeprefix("fixed-"))}


def test_logs_histogram_and_resume_equals_uninterrupted(teacher, manifest, tmp_path):
    straight = tmp_path / "straight"
    assert distill(teacher, manifest, straight, "--steps", "2", "--checkpoint-every", "1").exit_code == 0
    with Image.open(straight / "ratio_histogram.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert list((straight / "tb").glob("events.out.tfevents.*"))
    assert load_checkpoint_info(straight).extra["supervision_log"] == "supervision.csv"

    resumed = tmp_path / "resumed"
    assert distill(teacher, manifest, resumed, "--steps", "1").exit_code == 0
    again = distill(teacher, manifest, resumed, "--steps", "2")  # an existing folder without --resume
    assert again.exit_code == 2 and "--resume" in again.stderr
    args = ["distill", "--manifest", str(manifest), "--out", str(resumed), "--resume", "--steps", "2", "--quiet"]
    result = runner.invoke(app, [*args, "--json"])  # the teacher defaults to the recorded one
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps_this_run"] == 1
    for name in ("train_log.csv", "supervision.csv"):
        drop = {"seconds"}
        expected = [{k: v for k, v in r.items() if k not in drop} for r in rows(straight / name)]
        assert [{k: v for k, v in r.items() if k not in drop} for r in rows(resumed / name)] == expected
    expected, got = weights(straight), weights(resumed)
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) < 1e-6
    assert (resumed / "ratio_histogram.png").is_file()


@pytest.mark.slow
def test_two_process_accelerate_distill(teacher, manifest, tmp_path):
    out = tmp_path / "ddp"
    done = launch_two_processes(
        "distill", "--teacher", str(teacher), "--manifest", str(manifest), "--out", str(out), "--steps", "2", *FAST,
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2 and summaries[0]["steps"] == 2
    assert load_checkpoint_info(out, expect_stage="student").step == 2
    # both processes' samples reach the per-sample log: 2 steps x 2 processes x batch 1
    assert len(rows(out / "supervision.csv")) == 4
    assert all(math.isfinite(float(r["loss"])) for r in rows(out / "train_log.csv"))


def test_wrong_stage_checkpoints_are_errors(teacher, manifest, tmp_path):
    student = tmp_path / "student"
    model = build_student_from_teacher(FadaModel.from_checkpoint(teacher), "tokens")
    config = {"model": model.config.to_dict()}
    save_checkpoint(student, stage="student", mode="fast", config=config, components=model.components(), step=0)
    result = distill(student, manifest, tmp_path / "out", "--steps", "1")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "is a student checkpoint, but a teacher checkpoint is needed" in result.stderr
    args = ["distill", "--teacher", str(teacher), "--manifest", str(manifest), "--out", str(teacher), "--resume"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "is a teacher checkpoint, but a student checkpoint is needed" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mode", "turbo"], "--mode 'turbo' is not valid"),
        (["--mode", "balanced", "--cfg-conditioning", "tokens"], "--cfg-conditioning tokens needs --mode fast"),
        (["--solver-steps", "7"], "--solver-steps 7 does not divide a window"),
        (["--gt-weight", "fixed-x"], "--gt-weight 'fixed-x' is not valid"),
        (["--cfg-audio-range", "10,1"], "--cfg-audio-range 10.0,1.0 is not valid"),
        (["--optimizer", "sgd"], "--optimizer 'sgd' is not valid; use adamw or adamw8bit."),
    ],
)
def test_bad_options_are_one_line_errors(teacher, manifest, tmp_path, options, message):
    result = distill(teacher, manifest, tmp_path / "out", *options)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_gradient_checkpointing_and_8bit_adamw_run_and_are_recorded(teacher, manifest, tmp_path):
    out = tmp_path / "memory"
    result = distill(teacher, manifest, out, "--steps", "1", "--gradient-checkpointing", "--optimizer", "adamw8bit")
    assert result.exit_code == 0, result.output
    train = load_checkpoint_info(out, expect_stage="student").config["train"]
    assert train["gradient_checkpointing"] is True and train["optimizer"] == "adamw8bit"
    assert math.isfinite(float(rows(out / "train_log.csv")[0]["loss"]))


def test_bf16_distillation_holds_the_frozen_teacher_in_bf16(teacher, manifest, tmp_path, monkeypatch):
    import pipelines.distill as distill_module

    seen = []
    original = distill_module.distill_loss

    def spy(student, frozen_teacher, *args, **kwargs):
        seen.append((frozen_teacher.dtype, getattr(student, "module", student).dtype))
        return original(student, frozen_teacher, *args, **kwargs)

    monkeypatch.setattr(distill_module, "distill_loss", spy)
    out = tmp_path / "bf16"
    result = distill(teacher, manifest, out, "--steps", "1", "--mixed-precision", "bf16")
    assert result.exit_code == 0, result.output
    assert seen == [(torch.bfloat16, torch.float32)]  # frozen teacher in bf16, trained student in fp32
    assert math.isfinite(float(rows(out / "train_log.csv")[0]["loss"]))
    assert {v.dtype for v in weights(out).values()} == {torch.float32}


def test_latent_cache_and_workers_give_the_same_losses(teacher, manifest, tmp_path):
    """Windows read from the latent cache (filled by this run), loaded by a DataLoader worker, give the
    losses of windows decoded in the training process."""
    plain, cached, cache = tmp_path / "plain", tmp_path / "cached", tmp_path / "cache"
    assert distill(teacher, manifest, plain, "--steps", "1").exit_code == 0
    result = distill(teacher, manifest, cached, "--steps", "1", "--cache-latents", str(cache), "--num-workers", "1")
    assert result.exit_code == 0, result.output
    assert len(list((cache / "clips").glob("*.safetensors"))) == 3
    for name in ("train_log.csv", "supervision.csv"):
        drop = {"seconds"}
        expected = [{k: v for k, v in r.items() if k not in drop} for r in rows(plain / name)]
        assert [{k: v for k, v in r.items() if k not in drop} for r in rows(cached / name)] == expected
    train = load_checkpoint_info(cached, expect_stage="student").config["train"]
    assert train["latent_cache"] == str(cache) and train["num_workers"] == 1
