"""pipelines.checkpoint: diffusers-layout round trip, safety, stage checks, atomicity, exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from pipelines.checkpoint import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    checkpoint_hash,
    load_checkpoint_info,
    load_component,
    load_training_state,
    pack_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unpack_state,
)
from pipelines.errors import CheckpointError


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    )


def train_step(unet: UNet2DConditionModel, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=generator)  # (B, C, h, w)
    tokens = torch.randn(1, 3, 8, generator=generator)  # (B, N, D_cross)
    optimizer.zero_grad()
    unet(sample, 10, tokens).sample.square().mean().backward()
    optimizer.step()


def save(path, unet, stage="teacher", step=1, **kwargs):
    return save_checkpoint(
        path,
        stage=stage,
        mode="test",
        config={"model": {"preset": "tiny"}},
        components={"denoising_unet": unet},
        step=step,
        **kwargs,
    )


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def test_round_trip_in_diffusers_layout(tmp_path, unet):
    path = save(tmp_path / "ckpt", unet, step=7, manifest_hash="ab" * 32, extra={"note": "hi"})
    assert (path / "denoising_unet" / "config.json").is_file()
    assert (path / "denoising_unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary sibling left
    loaded = UNet2DConditionModel.from_pretrained(path / "denoising_unet")
    assert weights_equal(unet, loaded)
    assert weights_equal(unet, load_component(path, "denoising_unet", UNet2DConditionModel))
    info = load_checkpoint_info(path, expect_stage="teacher")
    assert (info.format_version, info.stage, info.mode, info.step) == (FORMAT_VERSION, "teacher", "test", 7)
    assert info.config == {"model": {"preset": "tiny"}}
    assert info.manifest_hash == "ab" * 32 and info.teacher_hash is None
    assert info.extra == {"note": "hi"} and info.components == ("denoising_unet",)
    assert not info.has_training_state
    with pytest.raises(CheckpointError, match="no training state"):
        load_training_state(path)
    with pytest.raises(CheckpointError, match="no component 'reference_unet'; it holds denoising_unet"):
        load_component(path, "reference_unet", UNet2DConditionModel)


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "../optimizer.pt", "../extra.pkl", "model.ckpt"])
def test_pickle_files_are_refused(tmp_path, unet, name):
    path = save(tmp_path / "ckpt", unet)
    (path / "denoising_unet" / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match=r"refusing to load .*(\.bin|\.pt|\.pkl|\.ckpt) is a pickle"):
        load_checkpoint_info(path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_component(path, "denoising_unet", UNet2DConditionModel)


def test_wrong_stage_names_the_command(tmp_path, unet):
    teacher = save(tmp_path / "teacher", unet, stage="teacher")
    student = save(tmp_path / "student", unet, stage="student", teacher_hash=checkpoint_hash(teacher))
    with pytest.raises(CheckpointError, match=r"is a teacher checkpoint, but a student .* `fada distill`"):
        load_checkpoint_info(teacher, expect_stage="student")
    with pytest.raises(CheckpointError, match=r"is a student checkpoint, but a teacher .* `fada train-teacher`"):
        load_checkpoint_info(student, expect_stage="teacher")
    assert load_checkpoint_info(student).teacher_hash == checkpoint_hash(teacher)
    with pytest.raises(CheckpointError, match="unknown checkpoint stage 'pupil'"):
        save(tmp_path / "x", unet, stage="pupil")


def test_newer_missing_and_foreign_folders(tmp_path, unet):
    path = save(tmp_path / "ckpt", unet)
    record = json.loads((path / CHECKPOINT_FILE).read_text())
    (path / CHECKPOINT_FILE).write_text(json.dumps({**record, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}, newer .*upgrade fada"):
        load_checkpoint_info(path)
    with pytest.raises(CheckpointError, match="checkpoint folder not found: .*nope"):
        load_checkpoint_info(tmp_path / "nope")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=f"not a fada checkpoint \\(no {CHECKPOINT_FILE}\\)"):
        load_checkpoint_info(foreign)
    with pytest.raises(CheckpointError, match="refusing to overwrite .*foreign"):
        save(foreign, unet)
    assert (foreign / "notes.txt").read_text() == "mine"


class ExplodingModel(torch.nn.Module):
    """A component whose save fails half-way, after writing a file."""

    def save_pretrained(self, folder, safe_serialization=True):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")


def test_failed_replace_keeps_the_old_checkpoint(tmp_path, unet):
    path = save(tmp_path / "ckpt", unet, step=1)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, stage="teacher", mode="test", config={}, components={"x": ExplodingModel()}, step=2)
    assert load_checkpoint_info(path).step == 1
    assert weights_equal(unet, load_component(path, "denoising_unet", UNet2DConditionModel))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    other = tiny_unet(seed=1)
    save(path, other, step=2)  # a successful replace
    assert load_checkpoint_info(path).step == 2
    assert weights_equal(other, load_component(path, "denoising_unet", UNet2DConditionModel))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_hash_follows_the_weights(tmp_path, unet):
    a = save(tmp_path / "a", unet)
    b = save(tmp_path / "b", unet, training_state={"x": torch.ones(2)})  # training state is not hashed
    c = save(tmp_path / "c", tiny_unet(seed=1))
    assert checkpoint_hash(a) == checkpoint_hash(b) != checkpoint_hash(c)


def test_optimizer_scheduler_and_rng_resume_exactly(tmp_path):
    unet = tiny_unet()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for seed in range(2):
        train_step(unet, optimizer, seed)
        scheduler.step()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    tensors, meta = pack_state({"lr_scheduler": scheduler.state_dict(), "rng": rng_state()})
    opt_tensors, opt_tree = pack_state(optimizer.state_dict(), prefix="optimizer")
    opt_meta = {"optimizer": opt_tree}
    path = save(
        tmp_path / "ckpt",
        unet,
        step=2,
        training_state={**tensors, **opt_tensors},
        training_meta={"other": meta, **opt_meta},
    )
    expected_draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    train_step(unet, optimizer, seed=2)  # the reference third step
    scheduler.step()

    # 2. resume from the checkpoint into fresh objects
    resumed = load_component(path, "denoising_unet", UNet2DConditionModel)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1.0)
    resumed_scheduler = torch.optim.lr_scheduler.StepLR(resumed_optimizer, step_size=1, gamma=0.5)
    all_tensors, all_meta = load_training_state(path)
    resumed_optimizer.load_state_dict(unpack_state(all_tensors, all_meta["optimizer"]))
    other = unpack_state(all_tensors, all_meta["other"])
    resumed_scheduler.load_state_dict(other["lr_scheduler"])
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_rng_state(other["rng"])
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(draws[0], expected_draws[0])
    np.testing.assert_array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]
    assert resumed_optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    train_step(resumed, resumed_optimizer, seed=2)
    resumed_scheduler.step()
    assert weights_equal(unet, resumed)  # bit-identical third step
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_pack_state_round_trips_nested_values():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4.0)}},
        "groups": [{"betas": (0.9, 0.999), "params": [0], "name": None, "flag": True}],
        "array": np.arange(5, dtype=np.uint32),
        "__private": 1,
    }
    tensors, meta = pack_state(state)
    assert set(tensors) == {"state.state.0.step", "state.state.0.exp_avg", "state.array"}
    json.dumps(meta)  # the tree is plain JSON
    back = unpack_state(tensors, json.loads(json.dumps(meta)))
    assert back["state"][0]["exp_avg"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert back["groups"][0]["betas"] == (0.9, 0.999) and back["groups"][0]["name"] is None
    assert back["array"].dtype == np.uint32 and back["array"].tolist() == [0, 1, 2, 3, 4]
    assert back["__private"] == 1
    with pytest.raises(TypeError, match="cannot store set"):
        pack_state({"bad": {1, 2}})
