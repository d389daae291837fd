"""`training.fit`: a stage defined here trains through the shared machinery; `fada demo`, the CLI and
the library resolve configs the same way."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines.checkpoint import load_checkpoint_info
from pipelines.data import batch_latents
from pipelines.demo import DemoConfig, teacher_options
from pipelines.errors import UsageError
from pipelines.train_teacher import TeacherStage
from pipelines.training import Stage, TrainConfig, fit, resolve_configs

runner = CliRunner()


@dataclasses.dataclass(frozen=True)
class ReconstructConfig(TrainConfig):
    target_scale: float = 1.0  # the denoising net learns to output target_scale × the clean latent


class ReconstructStage(Stage):
    """A made-up stage: the denoising net alone regresses the clean frames from themselves."""

    config_class = ReconstructConfig
    logs = {"train_log.csv": ("step", "loss", "lr", "seconds"), "scales.csv": ("step", "scale")}

    def trainable(self, model, config):
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("denoising_unet."))
        return super().trainable(model, config)

    def build_model(self, run):
        self.config = run.config
        return super().build_model(run)

    def loss(self, model, batch, generator):
        unwrapped = getattr(model, "module", model)
        z0, reference, motion = batch_latents(unwrapped.encode_images, batch)
        b = z0.shape[0]
        no = torch.zeros(b, dtype=torch.bool, device=z0.device)
        t = torch.full((b,), 500.0, device=z0.device)
        pred = model(z0, t, reference, motion, batch["audio_features"], no, no)
        return (pred.float() - self.config.target_scale * z0.float()).pow(2).mean(), {}

    def write_log(self, run, logs, step, records, means, lr, seconds):
        super().write_log(run, logs, step, records, means, lr, seconds)
        logs.write_rows("scales.csv", [[step, repr(run.config.target_scale)]])

    def mode(self, config):
        return "reconstruct"

    def record(self, run, step):
        return {"extra": {"scales": "scales.csv"}, "summary": {"target_scale": run.config.target_scale}}


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_fit_trains_a_stage_defined_outside_the_library(manifest, tmp_path):
    out = tmp_path / "reconstruct"
    overrides = {"steps": 2, "batch_size": 1, "seed": 3, "target_scale": 0.5, "checkpoint_every": 1}
    result = fit(ReconstructStage(), manifest, out, preset="tiny", overrides=overrides, device="cpu", quiet=True)
    assert (result.steps, result.steps_this_run, result.mode) == (2, 2, "reconstruct")
    assert math.isfinite(result.final_loss) and result.summary()["target_scale"] == 0.5
    info = load_checkpoint_info(out, expect_stage="teacher")
    assert info.step == 2 and info.mode == "reconstruct" and info.config["train"]["target_scale"] == 0.5
    assert info.extra["scales"] == "scales.csv" and info.has_training_state
    assert [r["scale"] for r in rows(out / "scales.csv")] == ["0.5", "0.5"]
    assert [int(r["step"]) for r in rows(out / "train_log.csv")] == [1, 2]
    # only the denoising net trained
    torch.manual_seed(3)
    from pipelines.model import FadaModel
    from pipelines.model_config import get_preset

    start = FadaModel.from_config(get_preset("tiny"))
    trained = FadaModel.from_checkpoint(out)
    for name in ("reference_unet", "temporal_layers", "audio_projection"):
        before, after = getattr(start, name).state_dict(), getattr(trained, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    changed = start.denoising_unet.state_dict(), trained.denoising_unet.state_dict()
    assert any(not torch.equal(changed[0][k], changed[1][k]) for k in changed[0])
    # the stage's own field is part of the resume check, and a resumed run continues the stage's logs
    with pytest.raises(UsageError, match=r"\['target_scale'\] differ"):
        fit(ReconstructStage(), manifest, out, overrides={"steps": 3, "target_scale": 2.0}, resume=True, device="cpu")
    resumed = fit(ReconstructStage(), manifest, out, overrides={"steps": 3}, resume=True, device="cpu", quiet=True)
    assert resumed.steps_this_run == 1 and len(rows(out / "scales.csv")) == 3


def test_demo_teacher_and_train_teacher_resolve_the_same_config(manifest, tmp_path):
    """The demo's teacher stage and `fada train-teacher` with the same options train with the same configs."""
    demo = DemoConfig(preset="tiny", seed=4)
    options = teacher_options(demo)["joint"] | {"steps": 1}
    out = tmp_path / "cli"
    flags = ["--stage", "joint", "--batch-size", str(options["batch_size"]), "--lr", str(options["lr"]),
             "--loss-weighting", options["loss_weighting"], "--ema", str(options["ema"]),
             "--seed", str(options["seed"]), "--checkpoint-every", str(options["checkpoint_every"]),
             "--motion-loss-weight", str(options["motion_loss_weight"]),
             "--identity-augment", str(options["identity_augment"]), "--steps", "1"]  # fmt: skip
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), "--preset", demo.preset, *flags]
    result = runner.invoke(app, [*args, "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = load_checkpoint_info(out, expect_stage="teacher").config
    resolved = resolve_configs(TeacherStage(), tmp_path / "demo", preset=demo.preset, overrides=options)
    assert resolved.model_config.to_dict() == saved["model"]
    assert resolved.config.to_dict() == saved["train"]
    # and the run the demo makes with them writes the same configs
    fit(TeacherStage(), manifest, tmp_path / "demo", preset=demo.preset, overrides=options, device="cpu", quiet=True)
    demo_saved = load_checkpoint_info(tmp_path / "demo", expect_stage="teacher").config
    assert (demo_saved["model"], demo_saved["train"]) == (saved["model"], saved["train"])


def test_resolution_applies_preset_defaults_then_overrides():
    sd15 = resolve_configs(TeacherStage(), "unused", preset="sd15", overrides={"lr": 3e-5})
    assert (sd15.config.batch_size, sd15.config.gradient_checkpointing, sd15.config.lr) == (1, True, 3e-5)
    explicit = resolve_configs(TeacherStage(), "unused", preset="sd15", overrides={"batch_size": 2})
    assert explicit.config.batch_size == 2
    plain = resolve_configs(TeacherStage(), "unused", overrides={"mixed_precision": "fp32"})
    assert plain.model_config.preset == "demo" and plain.config.mixed_precision == "no"
    with pytest.raises(UsageError, match="unknown training config key"):
        resolve_configs(TeacherStage(), "unused", overrides={"learning_rate": 1e-4})


def test_a_format_1_checkpoint_with_dropout_in_its_model_config_loads_and_resumes(manifest, tmp_path):
    """Format 1 kept p_drop_audio / p_drop_both in the model config; they are read as training options."""
    import json

    from pipelines.checkpoint import CHECKPOINT_FILE, FORMAT_VERSION, checkpoint_hash
    from pipelines.generate import TEACHER_DDIM, checkpoint_strategy
    from pipelines.model import FadaModel

    out = tmp_path / "old"
    overrides = {"steps": 1, "batch_size": 1, "seed": 5, "p_drop_audio": 0.2, "p_drop_both": 0.1}
    fit(TeacherStage(), manifest, out, preset="tiny", overrides=overrides, device="cpu", quiet=True)
    record = json.loads((out / CHECKPOINT_FILE).read_text())
    assert record["format_version"] == FORMAT_VERSION == 2 and "p_drop_audio" not in record["config"]["model"]
    # rewrite it as format 1 wrote it
    record["format_version"] = 1
    for name in ("p_drop_audio", "p_drop_both"):
        record["config"]["model"][name] = record["config"]["train"].pop(name)
    (out / CHECKPOINT_FILE).write_text(json.dumps(record))
    hash_before = checkpoint_hash(out)
    info = load_checkpoint_info(out, expect_stage="teacher")
    assert "p_drop_audio" not in info.config["model"] and info.config["train"]["p_drop_audio"] == 0.2
    assert FadaModel.from_checkpoint(out).config.preset == "tiny"
    assert checkpoint_strategy(out) is TEACHER_DDIM  # its model config read back whole: SD1.5's DDIM
    assert checkpoint_hash(out) == hash_before  # hashed as written: a student's record of it still matches
    resumed = fit(TeacherStage(), manifest, out, overrides={"steps": 2}, resume=True, device="cpu", quiet=True)
    assert resumed.steps_this_run == 1
    saved = json.loads((out / CHECKPOINT_FILE).read_text())
    assert saved["format_version"] == 2 and saved["config"]["train"]["p_drop_both"] == 0.1
    assert "p_drop_both" not in saved["config"]["model"]
