"""`fada train-teacher` on real demo clips at the tiny preset: training, exact resume, 2 processes, errors."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import launch_two_processes
from safetensors.torch import load_file
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines.checkpoint import load_checkpoint_info, load_training_state, save_checkpoint
from pipelines.errors import UsageError
from pipelines.manifest import read_manifest, write_manifest
from pipelines.model import FadaModel
from pipelines.model_config import get_preset
from pipelines.schedulers import sd15_alphas_cumprod
from pipelines.train_teacher import LOSS_WEIGHTINGS, TeacherTrainConfig, loss_weights, teacher_loss

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


def test_latent_cache_and_workers_replay_the_uninterrupted_run(manifest, straight_run, tmp_path):
    """A run that fills the latent cache, resumed with DataLoader workers reading it (the cache folder
    kept from the checkpoint), has the losses of the plain run; the cache is written once."""
    out, cache = tmp_path / "cached", tmp_path / "cache"
    base = ["train-teacher", "--manifest", str(manifest), "--out", str(out)]
    first = runner.invoke(app, [*base, *TINY, "--steps", "1", "--cache-latents", str(cache)])
    assert first.exit_code == 0, first.output
    files = sorted((cache / "clips").glob("*.safetensors"))
    assert len(files) == 3 and (cache / "cache.json").is_file()
    written = [f.stat().st_mtime_ns for f in files]
    resumed = runner.invoke(app, [*base, "--resume", "--steps", "2", "--num-workers", "2", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["loss"] for r in log_rows(out)] == [r["loss"] for r in log_rows(straight_run)]
    assert [f.stat().st_mtime_ns for f in sorted((cache / "clips").glob("*.safetensors"))] == written
    train = load_checkpoint_info(out, expect_stage="teacher").config["train"]
    assert train["latent_cache"] == str(cache) and train["num_workers"] == 2


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


@pytest.mark.parametrize("loading", ["in-process", "worker", "cache"])
def test_unreadable_clip(manifest, tmp_path, loading):
    """A clip is decoded when a window of it is drawn (a batch of 3 draws every clip), in a DataLoader
    worker or while the latent cache is filled: the error is one line naming the clip either way."""
    df = read_manifest(manifest)
    (manifest.parent / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    df.loc[1, "video_path"] = "clips/broken.mp4"
    bad = manifest.parent / "broken.parquet"
    write_manifest(df, bad, "test")
    extra = {"in-process": [], "worker": ["--num-workers", "1"], "cache": ["--cache-latents", str(tmp_path / "c")]}
    args = ["train-teacher", "--manifest", str(bad), "--out", str(tmp_path / "o"), *TINY, "--steps", "1"]
    result = runner.invoke(app, [*args, "--batch-size", "3", *extra[loading]])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert df.loc[1, "clip_id"] in lines[0] and "broken.mp4" in lines[0]


def test_invalid_optimizer_is_a_one_line_error(manifest, tmp_path):
    result, lines = run_cli("--manifest", str(manifest), "--out", str(tmp_path / "o"), "--optimizer", "sgd")
    assert result.exit_code == 2 and lines == ["Error: --optimizer 'sgd' is not valid; use adamw or adamw8bit."]
    assert not (tmp_path / "o").exists()


def test_memory_options_are_recorded_and_gradient_checkpointing_may_change_on_resume(manifest, tmp_path):
    memory = ["--gradient-checkpointing", "--optimizer", "adamw8bit", "--checkpoint-every", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for out, steps in ((straight, "2"), (resumed, "1")):
        args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), *TINY, *memory, "--steps", steps]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    train = load_checkpoint_info(resumed, expect_stage="teacher").config["train"]
    assert train["gradient_checkpointing"] is True and train["optimizer"] == "adamw8bit"
    tensors, _ = load_training_state(resumed)
    assert any(v.dtype == torch.uint8 for v in tensors.values())  # the 8-bit moments are in the training state
    resume = ["train-teacher", "--manifest", str(manifest), "--out", str(resumed), "--resume", "--quiet"]
    changed = runner.invoke(app, [*resume, "--steps", "2", "--optimizer", "adamw"])
    assert changed.exit_code == 2 and "['optimizer'] differ" in changed.stderr
    result = runner.invoke(app, [*resume, "--steps", "2", "--no-gradient-checkpointing"])
    assert result.exit_code == 0, result.output
    train = load_checkpoint_info(resumed, expect_stage="teacher").config["train"]
    assert train["gradient_checkpointing"] is False and train["optimizer"] == "adamw8bit"
    # the resumed 8-bit run (without checkpointing) continues the uninterrupted one (with it)
    expected, got = [float(r["loss"]) for r in log_rows(straight)], [float(r["loss"]) for r in log_rows(resumed)]
    assert got == pytest.approx(expected, rel=1e-5)
    expected, got = weights(straight), weights(resumed)
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) < 1e-6


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


def test_loss_weights_match_their_definitions():
    alphas_cumprod = sd15_alphas_cumprod(torch.float64)
    t = torch.tensor([0, 100, 500, 961, 999])
    assert torch.equal(loss_weights(t, alphas_cumprod, "eps"), torch.ones(5))
    weights_snr = loss_weights(t, alphas_cumprod, "truncated-snr").double()
    expected = ((1 - alphas_cumprod[t]) / alphas_cumprod[t]).clamp(min=1.0)  # max(1, 1/SNR)
    assert torch.allclose(weights_snr, expected, rtol=1e-5)
    assert weights_snr[0] == 1.0 and weights_snr[1] == 1.0  # high SNR: the plain ε-MSE
    assert 130 < weights_snr[3] < 140 and 200 < weights_snr[4] < 215  # 1/SNR at t = 961, 999
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    assert torch.allclose(loss_weights(t, alphas_cumprod, "v").double(), 1 + 1 / snr, rtol=1e-5)  # 1/ᾱ
    min_snr = loss_weights(t, alphas_cumprod, "min-snr", snr_gamma=5.0).double()
    assert torch.allclose(min_snr, snr.clamp(max=5.0) / snr, rtol=1e-5)
    assert min_snr[0] < 0.01 and min_snr[3] == 1.0  # low noise down-weighted, high noise the plain ε-MSE
    with pytest.raises(UsageError, match="loss weighting 'x0' is not valid"):
        loss_weights(t, alphas_cumprod, "x0")


class _ZeroPredictor(torch.nn.Module):
    """Predicts ε̂ = 0 and records the noisy input and timesteps it was given."""

    def encode_images(self, images):
        return torch.zeros_like(images)  # z_0 = 0, so z_t = √(1−ᾱ_t)·ε

    def forward(self, noisy, t, *conditions):
        self.noisy, self.t = noisy, t.long()
        return torch.zeros_like(noisy)


def test_loss_weighting_weights_each_samples_mse():
    alphas_cumprod = sd15_alphas_cumprod(torch.float32)
    batch = {
        "frames": torch.ones(4, 2, 3, 8, 8),
        "reference": torch.ones(4, 3, 8, 8),
        "motion": torch.ones(4, 1, 3, 8, 8),
    }
    batch["audio_features"] = torch.zeros(4, 2, 5)
    model = _ZeroPredictor()
    for weighting in LOSS_WEIGHTINGS:
        train_config = TeacherTrainConfig(loss_weighting=weighting)
        loss = teacher_loss(model, batch, alphas_cumprod, torch.Generator().manual_seed(0), train_config)
        scale = (1 - alphas_cumprod[model.t]).sqrt().view(-1, 1, 1, 1, 1)
        eps = model.noisy / scale  # the ε that was drawn
        per_sample = eps.pow(2).flatten(1).mean(1)  # MSE of ε̂ = 0
        expected = (loss_weights(model.t, alphas_cumprod, weighting) * per_sample).mean()
        assert torch.allclose(loss, expected, rtol=1e-5), weighting
    assert loss_weights(model.t, alphas_cumprod, "truncated-snr").max() > 1  # the seed draws a high t


def test_init_from_starts_a_new_run_at_the_teachers_weights(manifest, straight_run, tmp_path):
    out = tmp_path / "fine_tuned"
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), "--init-from", str(straight_run)]
    args += ["--loss-weighting", "truncated-snr", "--steps", "1", "--lr", "1e-12", "--ema", "0"]
    result = runner.invoke(app, [*args, "--batch-size", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    info = load_checkpoint_info(out, expect_stage="teacher")
    assert info.step == 1 and info.config["init_from"] == str(straight_run)
    assert info.config["train"]["loss_weighting"] == "truncated-snr" and info.config["model"]["preset"] == "tiny"
    start, tuned = weights(straight_run), weights(out)
    assert start.keys() == tuned.keys()
    assert all(torch.allclose(tuned[k], start[k], atol=1e-8) for k in start)  # one step at lr 1e-12


def test_init_from_errors(manifest, straight_run, tmp_path):
    student = tmp_path / "student"
    save_checkpoint(student, stage="student", mode="fast", config={}, components={}, step=5)
    result, lines = run_cli("--manifest", str(manifest), "--out", str(tmp_path / "o"), "--init-from", str(student))
    assert result.exit_code == 1 and len(lines) == 1 and "student checkpoint" in lines[0]
    result, lines = run_cli(
        "--manifest", str(manifest), "--out", str(straight_run), "--resume", "--init-from", str(straight_run)
    )
    assert result.exit_code == 2 and len(lines) == 1 and "drop --overwrite, --pretrained-sd and --init-from" in lines[0]
    result, lines = run_cli("--manifest", str(manifest), "--out", str(tmp_path / "p"), "--loss-weighting", "x0")
    assert result.exit_code == 2 and len(lines) == 1 and "--loss-weighting 'x0' is not valid" in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.fixture(scope="module")
def image_run(manifest, tmp_path_factory) -> Path:
    """2 image-stage steps from scratch (seed 3)."""
    out = tmp_path_factory.mktemp("runs") / "image"
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), "--stage", "image", "--steps", "2"]
    result = runner.invoke(app, [*args, *TINY, "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    return out


def fresh_weights() -> dict[str, torch.Tensor]:
    """The from-scratch weights the seed-3 runs start from."""
    torch.manual_seed(3)
    model = FadaModel.from_config(get_preset("tiny"))
    return {f"{name}.{k}": v for name in COMPONENTS for k, v in getattr(model, name).state_dict().items()}


def test_image_stage_trains_only_the_two_nets_and_records_its_stage(image_run):
    info = load_checkpoint_info(image_run, expect_stage="teacher")
    assert info.config["stages"] == [{"stage": "image", "steps": 2}] and info.image_only
    start, trained = fresh_weights(), weights(image_run)
    frozen = [k for k in start if k.startswith(("temporal_layers.", "audio_projection."))]
    assert frozen and all(torch.equal(trained[k], start[k]) for k in frozen)  # bit-identical
    for net in ("reference_unet.", "denoising_unet."):
        assert any(not torch.equal(trained[k], start[k]) for k in start if k.startswith(net)), net


def is_audio_attention(key: str) -> bool:
    return (
        key.startswith("denoising_unet.") and ".transformer_blocks." in key and (".attn2." in key or ".norm2." in key)
    )


def test_video_stage_trains_the_audio_path_and_temporal_layers_only(manifest, image_run, tmp_path):
    out = tmp_path / "video"
    args = ["--manifest", str(manifest), "--out", str(out), "--stage", "video", "--init-from", str(image_run)]
    result = runner.invoke(app, ["train-teacher", *args, *TINY, "--steps", "2", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    info = load_checkpoint_info(out, expect_stage="teacher")
    assert info.config["stages"] == [{"stage": "image", "steps": 2}, {"stage": "video", "steps": 2}]
    assert not info.image_only
    start, trained = weights(image_run), weights(out)
    trainable = {k for k in start if is_audio_attention(k) or k.startswith(("temporal_layers.", "audio_projection."))}
    frozen = set(start) - trainable
    assert any(".resnets." in k and ".norm2." in k for k in frozen)  # a resnet's norm2 is not audio attention
    assert all(torch.equal(trained[k], start[k]) for k in frozen)  # bit-identical
    for part in ("temporal_layers.", "audio_projection.", "denoising_unet."):
        assert any(not torch.equal(trained[k], start[k]) for k in trainable if k.startswith(part)), part


def test_video_stage_needs_an_image_stage_teacher(manifest, straight_run, tmp_path):
    result, lines = run_cli("--manifest", str(manifest), "--out", str(tmp_path / "a"), "--stage", "video")
    assert result.exit_code == 2 and len(lines) == 1 and "--init-from" in lines[0] and "--stage image" in lines[0]
    args = ["--manifest", str(manifest), "--out", str(tmp_path / "b"), "--stage", "video", "--init-from"]
    result, lines = run_cli(*args, str(straight_run))
    assert result.exit_code == 2 and len(lines) == 1 and "went through joint" in lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_image_stage_teacher_cannot_be_distilled(manifest, image_run, tmp_path):
    args = ["distill", "--teacher", str(image_run), "--manifest", str(manifest), "--out", str(tmp_path / "s")]
    result = runner.invoke(app, [*args, "--steps", "1", "--device", "cpu", "--quiet"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--stage video" in lines[0]
    assert not (tmp_path / "s").exists()


def test_lr_schedules():
    from pipelines.training import TrainConfig, lr_factor

    constant = TrainConfig(steps=100, warmup_steps=10)
    assert [lr_factor(s, constant) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cosine = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine", lr_min_ratio=0.1)
    assert lr_factor(9, cosine) == 1.0 and lr_factor(10, cosine) == 1.0
    assert lr_factor(60, cosine) == pytest.approx(0.55)  # half-way: the mean of 1 and 0.1
    assert lr_factor(110, cosine) == pytest.approx(0.1) and lr_factor(500, cosine) == pytest.approx(0.1)
    with pytest.raises(UsageError, match="`lr_schedule` 'step' is not valid"):
        TrainConfig(lr_schedule="step")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    from pipelines.attention import ReferenceRecorderProcessor, TemporalHook

    config = get_preset("tiny")
    g = torch.Generator().manual_seed(5)
    c, s, f, m = config.latent_channels, config.latent_size, config.frames_per_clip, config.motion_frames
    batch = {
        "frames": torch.randn(2, f, c, s, s, generator=g),
        "reference": torch.randn(2, c, s, s, generator=g),
        "motion": torch.randn(2, m, c, s, s, generator=g),
        "audio_features": torch.randn(2, f, config.audio_window_size, config.audio_feature_dim, generator=g),
    }
    calls = {"recorder": 0, "temporal": 0}
    for cls, method, key in (
        (ReferenceRecorderProcessor, "__call__", "recorder"),
        (TemporalHook, "_temporal", "temporal"),
    ):
        original = getattr(cls, method)

        @functools.wraps(original)  # keeps the signature diffusers reads to pass `fada`
        def counted(self, *args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, counted)

    def loss_and_grads(checkpointing: bool):
        torch.manual_seed(0)
        model = FadaModel.from_config(config)
        for layer in model.temporal_layers.layers:  # leave the zero init so the temporal layers get gradients
            torch.nn.init.normal_(layer.proj_out.weight, std=0.1)
        if checkpointing:
            model.enable_gradient_checkpointing()
        calls.update(recorder=0, temporal=0)
        alphas_cumprod = sd15_alphas_cumprod(torch.float32)
        loss = teacher_loss(model, batch, alphas_cumprod, torch.Generator().manual_seed(1))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, dict(calls)

    loss, grads, plain_calls = loss_and_grads(False)
    loss_ckpt, grads_ckpt, ckpt_calls = loss_and_grads(True)
    # the backward pass re-ran every recorder and temporal layer (checkpointing is on) ...
    assert ckpt_calls == {k: 2 * v for k, v in plain_calls.items()} and plain_calls["temporal"] > 0
    # ... and the loss and every gradient are those of the plain run, reference net included
    assert torch.allclose(loss_ckpt, loss, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    assert any(n.startswith("reference_unet.") and g.abs().max() > 0 for n, g in grads.items())
    assert any(n.startswith("temporal_layers.layers.0.transformer_blocks") for n in grads)
    for name, grad in grads.items():
        assert torch.allclose(grads_ckpt[name], grad, atol=1e-5), name


def test_a_bf16_training_step_on_cpu_is_finite_and_keeps_fp32_weights(manifest, tmp_path):
    out = tmp_path / "bf16"
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), *TINY, "--steps", "1"]
    result = runner.invoke(app, [*args, "--mixed-precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint_info(out, expect_stage="teacher").config["train"]["mixed_precision"] == "bf16"
    assert math.isfinite(float(log_rows(out)[0]["loss"]))
    assert {v.dtype for v in weights(out).values()} == {torch.float32}  # autocast: master weights stay fp32


def test_sd15_runs_start_from_settings_that_fit_one_gpu():
    from pipelines.training import preset_defaults

    cpu = preset_defaults("sd15", torch.device("cpu"))
    assert cpu == {"batch_size": 1, "gradient_checkpointing": True, "mixed_precision": "bf16"}
    assert preset_defaults("demo", torch.device("cpu")) == {} and preset_defaults("tiny", torch.device("cpu")) == {}
