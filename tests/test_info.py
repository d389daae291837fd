"""`fada info` on tiny checkpoints: a teacher, a fast student of it, and a folder that is not one."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines.checkpoint import checkpoint_hash, save_checkpoint
from pipelines.distill import build_student_from_teacher
from pipelines.model import FadaModel
from pipelines.model_config import get_preset

runner = CliRunner()


def _info(path, *extra):
    return runner.invoke(app, ["info", str(path), *extra])


def test_info_teacher_and_student(tmp_path):
    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("tiny"))
    config = {"model": model.config.to_dict()}
    teacher = save_checkpoint(
        tmp_path / "teacher", stage="teacher", mode="teacher", config=config, components=model.components(), step=7
    )
    teacher_hash = checkpoint_hash(teacher)
    student_model = build_student_from_teacher(model, "tokens")
    student = save_checkpoint(
        tmp_path / "fast", stage="student", mode="fast", step=3, teacher_hash=teacher_hash, manifest_hash="ab" * 32,
        config={"model": student_model.config.to_dict(), "train": {"windows": 4},
                "teacher": {"path": str(teacher), "hash": teacher_hash, "step": 7}},
        components=student_model.components(),
    )  # fmt: skip

    result = _info(teacher, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["stage"], info["mode"], info["preset"], info["step"]) == ("teacher", "teacher", "tiny", 7)
    assert (info["sampler"], info["default_steps"], info["nfe_per_clip"]) == ("ddim-multi-cfg", 25, 75)
    assert info["hash"] == teacher_hash and info["teacher_hash"] is None
    assert info["stages"] == [{"stage": "joint", "steps": 7}]
    sources = {w["name"]: w for w in info["weights"]}
    assert (
        sources["denoising_unet"]["source"] == str(teacher / "denoising_unet")
        and sources["denoising_unet"]["files"] == 1
    )
    assert sources["audio_encoder"]["source"].startswith("none")

    info = json.loads(_info(student, "--json").stdout)
    assert (info["stage"], info["mode"], info["nfe_per_clip"], info["default_cfg_ref"]) == ("student", "fast", 6, 2.0)
    assert info["teacher_hash"] == teacher_hash and info["teacher_matches"] is True
    assert info["manifest_hash"] == "ab" * 32 and "cfg_conditioning" in {w["name"] for w in info["weights"]}

    text = _info(student).stdout
    assert "perflow-cfg-tokens: 6 steps, NFE 6 per clip" in text and "(matches)" in text

    # the teacher folder re-saved with other weights: the student's record no longer matches it
    torch.manual_seed(1)
    other = FadaModel.from_config(get_preset("tiny"))
    save_checkpoint(teacher, stage="teacher", mode="teacher", config={"model": other.config.to_dict()},
                    components=other.components(), step=8)  # fmt: skip
    assert json.loads(_info(student, "--json").stdout)["teacher_matches"] is False
    assert "(DIFFERS)" in _info(student).stdout


def test_info_of_a_plain_folder_is_a_one_line_error(tmp_path):
    result = _info(tmp_path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "is not a fada checkpoint" in result.output
    assert result.output.count("\n") == 1
