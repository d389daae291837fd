"""The hallo model family: schedules against diffusers, `fada import hallo`'s strict key map, the imported
teacher's save/reload, and PeRFlow distillation from a v-prediction teacher (docs/DESIGN.md §3c, §4).

Key names and shapes come from Hallo's own code (`bench/hallo_side.py` wrote them at the hallo-tiny
sizes; `tests/data/hallo_sd15_keys.json.gz` at Hallo's released sizes); the tensors are made here
(`recipe_weights`), and `tests/data/hallo_forward.safetensors` holds Hallo's outputs for the same weights.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines import fada_math
from pipelines.checkpoint import FORMAT_VERSION, load_checkpoint_info
from pipelines.errors import CheckpointError, InputFileError
from pipelines.hallo import NOT_IN_HALLO, hallo_key_map, import_hallo
from pipelines.hallo_modules import FaceConditions
from pipelines.model import FadaModel, build_vae
from pipelines.model_config import get_preset
from pipelines.schedulers import (
    ALPHA_BAR_FLOOR,
    DDIMSampler,
    ddim_timesteps,
    eps_alphas_cumprod,
    schedule_for,
    sd15_alphas_cumprod,
    solve_window,
    v_to_eps,
)

DATA = Path(__file__).parent / "data"
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64, 64, 64],
                 layers_per_block=1, cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32,
                 center_input_sample=False)  # fmt: skip
TINY_WAV2VEC = {"hidden_size": 32, "num_hidden_layers": 2}


def _hallo_ddim(num_steps: int = 40) -> DDIMScheduler:
    """Hallo's sampler (configs/inference/default.yaml + scripts/inference.py's zero-SNR flags)."""
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                              steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                              timestep_spacing="trailing")  # fmt: skip
    scheduler.set_timesteps(num_steps)
    return scheduler


# --- schedules ------------------------------------------------------------------------------------


def test_v_prediction_zero_snr_trailing_ddim_equals_diffusers_bit_for_bit():
    config = get_preset("hallo-tiny")
    reference = _hallo_ddim(40)
    sampler = DDIMSampler.for_model(config, 40)
    assert torch.equal(schedule_for(config, torch.float32), reference.alphas_cumprod)
    assert schedule_for(config)[-1].item() == 0.0  # zero terminal SNR
    assert sampler.timesteps == reference.timesteps.tolist() == ddim_timesteps(40, "trailing")
    assert sampler.timesteps[:2] == [999, 974] and sampler.timesteps[-1] == 24
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 8, 8, generator=generator)
    z_ref = z.clone()
    for i, t in enumerate(sampler.timesteps):  # a whole chain, a fresh v each step
        v = torch.randn(z.shape, generator=generator)
        z = sampler.step(v, z, i)
        z_ref = reference.step(v, t, z_ref, eta=0.0).prev_sample
        assert torch.equal(z, z_ref), f"step {i} (t={t})"


def test_sd15_schedule_unchanged():
    sd15 = get_preset("sd15")
    assert torch.equal(schedule_for(sd15), sd15_alphas_cumprod())
    assert torch.equal(eps_alphas_cumprod(sd15), sd15_alphas_cumprod())  # no floor without zero SNR
    assert DDIMSampler.for_model(sd15, 25).timesteps == ddim_timesteps(25) == list(range(961, 0, -40))


def test_scaled_linear_zero_snr_equals_diffusers():
    config = dataclasses.replace(get_preset("hallo-tiny"), beta_schedule="scaled_linear")
    reference = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    )
    assert torch.equal(schedule_for(config, torch.float32), reference.alphas_cumprod)


def test_eps_schedule_floor_keeps_window_4_finite():
    config = get_preset("hallo-tiny")
    raw, floored = schedule_for(config), eps_alphas_cumprod(config)
    lam_raw, _ = fada_math.window_lambda_eta(raw, 4)
    assert torch.isinf(lam_raw)  # what the floor is for: a_s = ᾱ_999 = 0
    lam, eta = fada_math.window_lambda_eta(floored, torch.arange(1, 5))
    assert torch.isfinite(lam).all() and torch.isfinite(eta).all() and (eta < 0).all()
    assert lam[3].item() == pytest.approx(3.6563, abs=1e-4) and eta[3].item() == pytest.approx(-2.6611, abs=1e-4)
    assert floored.min().item() == ALPHA_BAR_FLOOR and torch.equal(
        floored[raw >= ALPHA_BAR_FLOOR], raw[raw >= ALPHA_BAR_FLOOR]
    )


# --- the strict key map ---------------------------------------------------------------------------


def recipe_weights(keys: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """net.pth tensors for ``keys`` (name → shape), every one random (zero-initialised layers too).

    In name order from one generator seeded ``seed``: matrices and convolutions N(0, 1/fan_in), other
    weights (norm scales) 1 + 0.1·N(0, 1), the rest 0.05·N(0, 1). `bench/hallo_side.py --fixture` loads
    the same recipe into Hallo's own networks (torch's CPU generator gives the same numbers in Hallo's
    torch 2.2.2 and fada's torch).
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(keys):
        shape = tuple(keys[name])
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            state[name] = noise / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):
            state[name] = 1 + 0.1 * noise
        else:
            state[name] = 0.05 * noise
    return state


def _write_release(folder: Path, keys: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Hallo release folder at the hallo-tiny sizes: config files, a random VAE and net.pth of ``keys``."""
    state = recipe_weights(keys, seed)
    (folder / "hallo").mkdir(parents=True)
    torch.save(state, folder / "hallo" / "net.pth")
    unet = folder / "stable-diffusion-v1-5" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps(TINY_UNET))
    build_vae(get_preset("hallo-tiny")).save_pretrained(folder / "sd-vae-ft-mse")
    wav2vec = folder / "wav2vec" / "wav2vec2-base-960h"
    wav2vec.mkdir(parents=True)
    (wav2vec / "config.json").write_text(json.dumps(TINY_WAV2VEC))
    return state


@pytest.fixture(scope="module")
def tiny_keys() -> dict:
    return json.loads((DATA / "hallo_tiny_keys.json").read_text())


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_keys):
    root = tmp_path_factory.mktemp("hallo")
    state = _write_release(root / "pretrained", tiny_keys)
    return import_hallo(root / "pretrained", root / "teacher", identity="none", frames_per_clip=4), state


@pytest.fixture(scope="module")
def imported_model(imported) -> FadaModel:
    return FadaModel.from_checkpoint(imported[0], expect_stage="teacher").eval()


def test_import_maps_every_key_and_reloads(imported, imported_model):
    teacher, state = imported
    model = imported_model
    assert model.config.family == "hallo" and model.config.prediction_type == "v_prediction"
    assert model.config.audio_feature_dim == 64 and model.config.audio_window == 2 and model.config.audio_tokens == 4
    parts = model.components()
    # a key of each kind lands where the map says, bit for bit
    checks = {
        "reference_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight":
            parts["reference_unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight,
        "denoising_unet.conv_in.weight": parts["denoising_unet"].conv_in.weight,
        "denoising_unet.down_blocks.0.audio_modules.0.transformer_blocks.0.attn2_2.to_k.weight":
            parts["audio_modules"].layers[0].transformer_blocks[0].attn2_2.to_k.weight,
        "denoising_unet.mid_block.motion_modules.0.temporal_transformer.proj_out.weight":
            parts["motion_modules"].layers[-1].temporal_transformer.proj_out.weight,  # module order: down, up, mid
        "denoising_unet.up_blocks.0.motion_modules.1.temporal_transformer.norm.bias":
            parts["motion_modules"].resnet_layers[-1].temporal_transformer.norm.bias,  # carried, not run
        "face_locator.conv_out.weight": parts["face_locator"].conv_out.weight,
        "imageproj.proj.weight": parts["identity_projection"].proj.weight,
        "audioproj.proj3.bias": parts["audio_projection"].proj3.bias,
    }  # fmt: skip
    for key, tensor in checks.items():
        assert torch.equal(tensor, state[key]), key
    assert torch.equal(
        parts["reference_unet"].conv_out.weight, torch.zeros_like(parts["reference_unet"].conv_out.weight)
    )
    # the teacher saved and reloaded gives the same ε (a v-prediction network's output converted)
    torch.manual_seed(0)
    h, f = model.config.latent_size, model.config.frames_per_clip
    face = FaceConditions(
        torch.randn(1, 512), torch.rand(1, 3, 64, 64), {s: torch.rand(1, 3, s * s) for s in (8, 4, 2, 1)}
    )
    noisy, latents = torch.randn(1, f, 4, h, h), torch.randn(1, 3, 4, h, h)
    audio = torch.randn(1, f, 5, 64)

    def eps(m):
        with torch.no_grad():
            ref = m.reference_features(latents[:, 0], latents[:, 1:], face)
            return m.denoise(noisy, 500.0, m.audio_tokens(audio), ref, torch.tensor([False]), torch.tensor([False]))

    again = FadaModel.from_checkpoint(teacher, expect_stage="teacher")
    assert torch.equal(eps(model), eps(again)) and torch.isfinite(eps(model)).all()


def test_imported_teacher_matches_hallos_own_forward(imported, imported_model):
    """A stored run of Hallo's own code (tests/data/hallo_forward.safetensors, 63 KB, written by
    `bench/hallo_side.py --fixture` in Hallo's environment from the same `recipe_weights`): one
    denoising-UNet forward at t = 999 and 500, and the first two of 40 DDIM steps of Hallo's pipeline with
    CFG 3.5, through the imported teacher, to ≤ 1e-4.

    Hallo's side runs with the two patches of the equivalence bench's third variant (reference features
    kept fp32; every reference image reads the conditional identity tokens under CFG), where the two codes
    agree to ≤ 1e-4 (bench/results/hallo_equivalence.md). A merge that breaks the family's forward, the key
    map or the v-prediction sampler fails here.
    """
    from safetensors.torch import load_file

    from pipelines.generate import GenerateConfig, teacher_strategy

    _, state = imported
    stored = load_file(str(DATA / "hallo_forward.safetensors"))
    sums = torch.tensor([state[k].double().abs().sum().item() for k in sorted(state)], dtype=torch.float64)
    assert torch.allclose(sums, stored["weight_abs_sums"], rtol=1e-6), "recipe_weights no longer gives the fixture's"
    model = imported_model
    h = model.config.latent_size
    latents = stored["ref_latents"]  # (1+M, 4, h, w), from Hallo's VAE
    masks = {h // 2**i: torch.stack([stored[f"mask_{k}_{i}"][0] for k in ("full", "face", "lip")])[None]
             for i in range(4)}  # fmt: skip
    face = FaceConditions(stored["face_emb"], stored["region"].float(), masks)
    keep = torch.zeros(1, dtype=torch.bool)
    with torch.no_grad():
        reference = model.reference_features(latents[None, 0], latents[None, 1:], face)
        tokens = model.audio_tokens(stored["audio"].flatten(3))  # (1, F, W, layers·hidden)
        noisy = stored["noisy"].permute(0, 2, 1, 3, 4)  # Hallo's (1, 4, F, h, w) → (1, F, 4, h, w)
        for t in (999, 500):
            expected = stored[f"v_t{t}"]
            assert expected.abs().max().item() > 0.5  # a real output, not a trivially equal zero
            v = model.denoise(noisy, float(t), tokens, reference, keep, keep, native=True)
            assert (v.permute(0, 2, 1, 3, 4) - expected).abs().max().item() <= 1e-4, t
        # Hallo's sampler: 40 trailing v-prediction DDIM steps, CFG 3.5 = fada's cfg_audio = cfg_ref = 3.5
        strategy, config = teacher_strategy(model.config), GenerateConfig(cfg_audio=3.5, cfg_ref=3.5)
        scheduler = strategy.make_scheduler(40)
        expected = stored["ddim_cfg3.5"]  # (3, 1, 4, F, h, w): the initial noise, then steps 1 and 2
        z = expected[0].permute(0, 2, 1, 3, 4)
        for i in (0, 1):
            z = scheduler.step(strategy.guided_eps(model, z, scheduler.timesteps[i], tokens, reference, config), z, i)
            assert (z.permute(0, 2, 1, 3, 4) - expected[i + 1]).abs().max().item() <= 1e-4, i + 1


def test_info_shows_source_and_hash(imported):
    teacher, _ = imported
    assert load_checkpoint_info(teacher, expect_stage="teacher").format_version == FORMAT_VERSION  # today's format
    result = CliRunner().invoke(app, ["info", str(teacher), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["source"].startswith("hallo: ") and "sha256 " in summary["source"]
    assert summary["sampler"] == "ddim-multi-cfg" and summary["default_steps"] == 40 and summary["nfe_per_clip"] == 120


def test_import_option_errors_name_the_flag(tmp_path):
    result = CliRunner().invoke(app, ["import", "hallo", str(tmp_path), "--out", str(tmp_path / "t"),
                                      "--identity", "arcface", "--quiet"])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --identity 'arcface' is not valid; use insightface or none."
    assert not (tmp_path / "t").exists()


def test_renamed_key_fails_with_its_name(tmp_path, tiny_keys):
    keys = dict(tiny_keys)
    keys["denoising_unet.down_blocks.0.audio_modulez.0.norm.weight"] = keys.pop(
        "denoising_unet.down_blocks.0.audio_modules.0.norm.weight"
    )
    _write_release(tmp_path / "pretrained", keys)
    result = CliRunner().invoke(app, ["import", "hallo", str(tmp_path / "pretrained"), "--out", str(tmp_path / "t"),
                                      "--identity", "none", "--quiet"])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("Error: net.pth key 'denoising_unet.down_blocks.0.audio_modulez.0.norm.weight'")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()  # no half-written output


def test_missing_key_fails_with_its_name(tmp_path, tiny_keys):
    keys = {
        k: v
        for k, v in tiny_keys.items()
        if k != "denoising_unet.mid_block.motion_modules.0.temporal_transformer.norm.bias"
    }
    _write_release(tmp_path / "pretrained", keys)
    with pytest.raises(CheckpointError, match=r"motion_modules\.layers\.\d+\.temporal_transformer\.norm\.bias"):
        import_hallo(tmp_path / "pretrained", tmp_path / "t", identity="none", frames_per_clip=4)


def test_pickle_that_weights_only_refuses_is_a_clear_error(tmp_path, tiny_keys):
    _write_release(tmp_path / "pretrained", tiny_keys)
    torch.save({"net": datetime.date(2024, 6, 15)}, tmp_path / "pretrained" / "hallo" / "net.pth")  # not a tensor
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused"):
        import_hallo(tmp_path / "pretrained", tmp_path / "t", identity="none")


def test_insightface_identity_needs_its_models(tmp_path, tiny_keys):
    _write_release(tmp_path / "pretrained", tiny_keys)
    with pytest.raises(InputFileError, match="face_analysis"):
        import_hallo(tmp_path / "pretrained", tmp_path / "t")


@pytest.mark.slow  # builds the SD1.5-size model on the meta device (~20 s on one core)
def test_released_layout_maps_completely_at_full_size():
    """Every key of Hallo's released net.pth (names and shapes from Hallo's code at SD1.5 sizes) has its place."""
    with gzip.open(DATA / "hallo_sd15_keys.json.gz", "rt") as handle:
        keys = json.load(handle)
    with torch.device("meta"):
        model = FadaModel.from_config(get_preset("hallo"))
    mapping = hallo_key_map(keys, model.denoising_unet)
    components = model.components()
    filled = {}
    for key, (component, target) in mapping.items():
        assert tuple(components[component].state_dict()[target].shape) == tuple(keys[key]), key
        filled.setdefault(component, set()).add(target)
    for component, targets in filled.items():
        expected = set(components[component].state_dict()) - set(NOT_IN_HALLO.get(component, {}))
        assert targets == expected, component
    assert set(filled) == {"reference_unet", "denoising_unet", "face_locator", "identity_projection",
                           "audio_projection", "audio_modules", "motion_modules"}  # fmt: skip


# --- distillation from a v-prediction teacher -------------------------------------------------------


def test_perflow_targets_from_v_teacher_match_eqs_2_to_5():
    """Window starts, teacher solve and targets through fada's code equal the paper's equations written out
    with the v → ε conversion (ᾱ > 0: windows 1–3), and stay finite in window 4 (ᾱ floored)."""
    torch.manual_seed(0)
    config = get_preset("hallo-tiny")
    teacher = FadaModel.from_config(config).eval()
    for p in teacher.parameters():  # every layer random (zero-initialised ones too)
        p.data.normal_(0, 0.05)
    ac = eps_alphas_cumprod(config, torch.float32)
    h, f, n = config.latent_size, config.frames_per_clip, 5
    face = FaceConditions(
        torch.randn(1, 512), torch.rand(1, 3, 64, 64), {s: torch.rand(1, 3, s * s) for s in (8, 4, 2, 1)}
    )
    latents = torch.randn(1, 3, 4, h, h)
    z0, eps = torch.randn(1, f, 4, h, h), torch.randn(1, f, 4, h, h)
    no = torch.tensor([False])
    with torch.no_grad():
        ref = teacher.reference_features(latents[:, 0], latents[:, 1:], face)
        tokens = teacher.audio_tokens(torch.randn(1, f, 5, 64))
        for k in (1, 2, 3, 4):
            idx = fada_math.window_solver_indices(k, n)
            a = ac.double()
            a_s, a_e = a[idx[0]], a[idx[-1]]
            z_s = a_s.sqrt() * z0 + (1 - a_s).sqrt() * eps  # Eq. 2's start
            # fada: ε from the model, DDIM across the window, Eq. 4's target
            z_end = solve_window(lambda z, i: teacher.denoise(z, i.float(), tokens, ref, no, no), z_s.float(), k, n, ac)
            target = fada_math.perflow_eps_target(z_s, z_end.double(), a, k)
            # written out: v from the network, ε = √ᾱ·v + √(1−ᾱ)·z, DDIM, λ, η
            z = z_s.float()
            for j in range(n):
                v = teacher.denoise(z, float(idx[j]), tokens, ref, no, no, native=True).double()
                a_t, a_p = a[idx[j]], a[idx[j + 1]]
                e = a_t.sqrt() * v + (1 - a_t).sqrt() * z.double()
                x0 = (z.double() - (1 - a_t).sqrt() * e) / a_t.sqrt()
                z = (a_p.sqrt() * x0 + (1 - a_p).sqrt() * e).float()
            lam = (a_e / a_s).sqrt()
            eta = (1 - a_e).sqrt() - lam * (1 - a_s).sqrt()
            expected = (z.double() - lam * z_s) / eta
            assert torch.isfinite(target).all(), k
            assert (target - expected).abs().max().item() < 2e-4 * expected.abs().max().item(), k
            if k < 4:
                assert a_s.item() > ALPHA_BAR_FLOOR


def test_v_to_eps_inverts_the_forward_process():
    a = torch.tensor([0.3, 0.9], dtype=torch.float64)
    z0, eps = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    z = a.sqrt()[:, None] * z0 + (1 - a).sqrt()[:, None] * eps
    v = a.sqrt()[:, None] * eps - (1 - a).sqrt()[:, None] * z0  # Salimans & Ho's v
    assert torch.allclose(v_to_eps(v, z, a), eps, atol=1e-12)


# --- the CLI at the small size: distil a v-prediction hallo teacher, generate with it and its student ---------


@pytest.fixture(scope="module")
def hallo_teacher(tmp_path_factory) -> Path:
    from pipelines.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("hallo-tiny"))
    out = tmp_path_factory.mktemp("hallo") / "teacher"
    config = {"model": model.config.to_dict()}
    return save_checkpoint(out, stage="teacher", mode="teacher", config=config, components=model.components(), step=0)


def test_distill_from_v_prediction_teacher_is_finite(hallo_teacher, manifest, tmp_path):
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(hallo_teacher), "--manifest", str(manifest), "--out", str(out),
            "--mode", "fast", "--steps", "2", "--batch-size", "1", "--solver-steps", "5", "--seed", "3",
            "--quiet", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with (out / "supervision.csv").open() as handle:
        import csv

        samples = list(csv.DictReader(handle))
    assert len(samples) == 2
    for row in samples:
        for name in ("loss_distill", "loss_gt", "ratio", "weight"):
            assert torch.isfinite(torch.tensor(float(row[name]))), (name, row)
    student = FadaModel.from_checkpoint(out, expect_stage="student")
    assert student.config.family == "hallo" and student.cfg_conditioning is not None


def test_distill_from_hallo_teacher_refuses_the_latent_cache_before_writing(hallo_teacher, manifest, tmp_path):
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(hallo_teacher), "--manifest", str(manifest), "--out", str(out),
            "--cache-latents", str(tmp_path / "cache"), "--steps", "1", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: distilling a hallo-family teacher needs the reference frames' pixels (its face inputs); "
        "leave --cache-latents off."
    )
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("start", ["preset", "init_from"])
def test_training_a_hallo_family_teacher_is_a_one_line_error_before_writing(hallo_teacher, manifest, tmp_path, start):
    out = tmp_path / "teacher"
    origin = ["--preset", "hallo-tiny"] if start == "preset" else ["--init-from", str(hallo_teacher)]
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), *origin, "--steps", "1", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "Error: training a hallo-family teacher is not supported (its loss would need the family's face inputs "
        "and its own prediction target); import one with `fada import hallo` and distil it, or train a fada preset "
        "(tiny, demo, sd15)."
    )
    assert not out.exists()


@pytest.mark.slow  # 40 teacher DDIM steps × 3 branches per clip on the CPU
def test_generate_with_hallo_teacher(hallo_teacher, manifest, tmp_path):
    from pipelines.media import read_video

    clip = sorted((manifest.parent / "clips").glob("*.mp4"))[0]
    frames, _ = read_video(clip)
    from PIL import Image

    Image.fromarray(frames[0]).save(tmp_path / "face.png")
    out = tmp_path / "teacher.mp4"
    args = ["generate", "--checkpoint", str(hallo_teacher), "--image", str(tmp_path / "face.png"), "--audio", str(clip),
            "-o", str(out), "--cfg-audio", "3.5", "--cfg-ref", "3.5", "--no-crop", "--quiet", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["steps"] == 40 and stats["nfe"] == 120 and out.is_file()
