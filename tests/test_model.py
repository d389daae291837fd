"""The shared teacher/student model (DESIGN §3): configs, audio features, processors, FadaModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_tiny_wav2vec2
from diffusers import UNet2DConditionModel

from pipelines.audio import (
    MelEncoder,
    build_audio_encoder,
    frame_audio_features,
    with_audio_encoder,
)
from pipelines.checkpoint import save_checkpoint
from pipelines.distill import build_student_from_teacher
from pipelines.errors import InputFileError, UsageError
from pipelines.model import FadaModel, build_unet, build_vae
from pipelines.model_config import ModelConfig, get_preset


def tiny_model(**overrides) -> FadaModel:
    torch.manual_seed(0)
    return FadaModel.from_config(get_preset("tiny", **overrides)).eval()


def clip_inputs(config: ModelConfig, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c, s, f, m = config.latent_channels, config.latent_size, config.frames_per_clip, config.motion_frames
    return {
        "noisy": torch.randn(batch, f, c, s, s, generator=g),
        "reference": torch.randn(batch, c, s, s, generator=g),
        "motion": torch.randn(batch, m, c, s, s, generator=g),
        "audio": torch.randn(batch, f, config.audio_window_size, config.audio_feature_dim, generator=g),
    }


# --- config ---------------------------------------------------------------------------------------


def test_presets_and_config_round_trip():
    for name in ("tiny", "demo", "sd15"):
        config = get_preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    sd15 = get_preset("sd15")
    assert (sd15.latent_size, sd15.latent_channels, sd15.cross_attention_dim) == (64, 4, 768)
    assert get_preset("demo", frames_per_clip=4).frames_per_clip == 4
    with pytest.raises(UsageError, match="tiny, demo, sd15"):
        get_preset("huge")
    with pytest.raises(UsageError, match="unknown model config key.*'frames'"):
        get_preset("tiny", frames=3)
    with pytest.raises(UsageError, match="unknown model config key"):
        ModelConfig.from_dict({**get_preset("tiny").to_dict(), "colour": 1})
    with pytest.raises(UsageError, match="cfg_conditioning='magic'"):
        get_preset("tiny", cfg_conditioning="magic")
    with pytest.raises(UsageError, match="audio_feature_dim=64"):
        get_preset("tiny", n_mels=20)


def test_sd15_builds_on_meta_device_at_sd_size():
    with torch.device("meta"):
        model = FadaModel.from_config(get_preset("sd15"))
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.components().items()}
    assert counts["denoising_unet"] == counts["reference_unet"] == 859_520_964  # SD1.5 UNet
    assert counts["vae"] == 83_653_863  # SD1.5 VAE
    assert model.config.latent_size == 64


# --- audio ----------------------------------------------------------------------------------------


def test_mel_features_shape_alignment_and_edge_padding():
    encoder = MelEncoder(n_mels=16, window=2)
    t = np.arange(16_000) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    tone[: 640 * 10] = 0.0  # the first 10 frames are silent
    feats = frame_audio_features(tone, 25, encoder)
    assert feats.shape == (25, 5, 64)
    assert torch.equal(feats, frame_audio_features(tone, 25, encoder))  # deterministic
    center = feats[:, 2]  # (T, D): each frame's own features
    assert torch.allclose(center[:8], torch.full_like(center[:8], -5.0))  # log10(1e-5) for silence
    assert center[15].max() > 0  # loud 1 kHz tone
    assert torch.equal(feats[0, 0], feats[0, 2]) and torch.equal(feats[-1, 4], feats[-1, 2])  # edge padding
    assert torch.equal(feats[12, 0], center[10]) and torch.equal(feats[12, 4], center[14])  # window order
    short = frame_audio_features(tone[:3200], 10, encoder)  # audio shorter than the video: silence
    assert short.shape == (10, 5, 64) and torch.allclose(short[-2:, 2], torch.tensor(-5.0))


def test_wav2vec2_loader_from_local_folder(tmp_path):
    save_tiny_wav2vec2(tmp_path / "w2v")
    config = with_audio_encoder(get_preset("tiny"), "wav2vec2", tmp_path / "w2v")
    assert config.audio_feature_dim == 16
    wav = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    feats = frame_audio_features(wav, 25, build_audio_encoder(config))
    assert feats.shape == (25, 5, 16) and torch.isfinite(feats).all()
    model = FadaModel.from_config(config)
    assert model.audio_tokens(feats[None, :4]).shape == (1, 4, 4, 32)
    with pytest.raises(InputFileError, match="no config.json"):
        with_audio_encoder(get_preset("tiny"), "wav2vec2", tmp_path / "missing")
    with pytest.raises(UsageError, match="audio_feature_dim=64"):
        build_audio_encoder(get_preset("tiny", audio_encoder="wav2vec2", audio_encoder_path=str(tmp_path / "w2v")))


# --- the model ------------------------------------------------------------------------------------


def test_tiny_shapes_and_condition_states():
    model = tiny_model()
    x = clip_inputs(model.config)
    other = clip_inputs(model.config, seed=2)
    t = torch.tensor([500.0])
    with torch.no_grad():
        tokens, tokens2 = model.audio_tokens(x["audio"]), model.audio_tokens(other["audio"])
        ref = model.reference_features(x["reference"], x["motion"])
        ref2 = model.reference_features(other["reference"], other["motion"])
        e_a, e_r, e_b = model.denoise_multi_cfg(x["noisy"], t, tokens, ref)
        a2, r2, b2 = model.denoise_multi_cfg(x["noisy"], t, tokens2, ref)  # other audio
        a3, r3, b3 = model.denoise_multi_cfg(x["noisy"], t, tokens, ref2)  # other reference image + motion
    assert e_a.shape == (1, 4, 3, 32, 32) and tokens.shape == (1, 4, 4, 32)
    assert (e_a - e_r).abs().max() > 1e-3 and (e_r - e_b).abs().max() > 1e-3  # three different states
    assert (a2 - e_a).abs().max() > 1e-3  # ε_a follows the audio ...
    assert torch.equal(r2, e_r) and torch.equal(b2, e_b)  # ... ε_r and ε_b ignore it (null audio)
    assert (a3 - e_a).abs().max() > 1e-3 and (r3 - e_r).abs().max() > 1e-3  # reference matters ...
    assert torch.allclose(b3, e_b, atol=1e-6)  # ... except in ε_b (reference path dropped)
    assert model.nfe_counter == 9 and model.denoising_net_calls == 3


def test_batched_states_equal_separate_calls():
    model = tiny_model()
    x = clip_inputs(model.config)
    t = torch.tensor([321.0])
    with torch.no_grad():
        tokens = model.audio_tokens(x["audio"])
        ref = model.reference_features(x["reference"], x["motion"])
        batched = model.denoise_multi_cfg(x["noisy"], t, tokens, ref)
        single = [
            model.denoise(x["noisy"], t, tokens, ref, torch.tensor([da]), torch.tensor([dr]))
            for da, dr in ((False, False), (True, False), (True, True))
        ]
        no_ref = model.denoise(x["noisy"], t, tokens, None, torch.tensor([True]), torch.tensor([True]))
    for b, s in zip(batched, single, strict=True):
        assert torch.allclose(b, s, atol=1e-5)
    assert torch.allclose(no_ref, single[2], atol=1e-6)


def test_reference_net_runs_once_per_clip():
    model = tiny_model()
    x = clip_inputs(model.config)
    with torch.no_grad():
        ref = model.reference_features(x["reference"], None)  # first clip: reference repeated
        tokens = model.audio_tokens(x["audio"])
        for t in (900.0, 500.0, 100.0, 1.0):
            model.denoise_multi_cfg(x["noisy"], torch.tensor([t]), tokens, ref)
    assert model.reference_net_calls == 1
    assert model.nfe_counter == 4 * 3 and model.denoising_net_calls == 4


def test_first_clip_features_equal_the_reference_repeated():
    model = tiny_model()
    x = clip_inputs(model.config, batch=2)
    with torch.no_grad():
        once = model.reference_features(x["reference"], None)  # the net runs on the reference alone
        repeated = x["reference"][:, None].expand(2, model.config.motion_frames, *x["reference"].shape[1:])
        full = model.reference_features(x["reference"], repeated)  # on 1 + M copies of it
    assert model.reference_net_calls == 2 and once.features.keys() == full.features.keys()
    for name, h in full.features.items():
        assert once.features[name].shape == h.shape
        assert torch.allclose(once.features[name], h, atol=1e-5), name  # float rounding of the batch size


def test_from_scratch_reference_net_equals_denoising_net():
    model = tiny_model()
    reference, denoising = model.reference_unet.state_dict(), model.denoising_unet.state_dict()
    shared = set(reference) & set(denoising)
    assert len(shared) > 10 and all(torch.equal(reference[k], denoising[k]) for k in shared)


def test_demo_forward_batch_one():
    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("demo")).eval()
    x = clip_inputs(model.config)
    with torch.no_grad():
        eps = model(x["noisy"], torch.tensor([700.0]), x["reference"], x["motion"], x["audio"], [False], [False])
    assert eps.shape == (1, 8, 3, 64, 64) and torch.isfinite(eps).all()


@pytest.mark.parametrize("mode", ["tokens", "layer", "time-embed"])
def test_fresh_student_equals_teacher(mode):
    teacher = tiny_model()
    student = build_student_from_teacher(teacher, mode, cfg_tokens=3).eval()
    x = clip_inputs(teacher.config, batch=2)
    scales = (torch.tensor([6.5, 1.0]), torch.tensor([2.0, 1.0]))
    args = (x["noisy"], torch.tensor([800.0, 50.0]), x["reference"], x["motion"], x["audio"])
    drops = (torch.tensor([False, True]), torch.tensor([False, False]))
    with torch.no_grad():
        assert torch.equal(student(*args, *drops, scales), teacher(*args, *drops))
        for p in student.cfg_conditioning.parameters():  # leave the zero init: the scales now matter
            p.add_(0.05 * torch.randn_like(p))
        moved = student(*args, *drops, scales)
        other = student(*args, *drops, (torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])))
    assert (moved - teacher(*args, *drops)).abs().max() > 1e-4
    assert (moved - other).abs().max() > 1e-4
    with pytest.raises(UsageError, match="without CFG conditioning"):
        teacher(*args, *drops, scales)


def test_gradients_reach_every_trainable_part():
    model = build_student_from_teacher(tiny_model(), "tokens").train()
    x = clip_inputs(model.config, batch=2)
    eps = model(
        x["noisy"],
        torch.tensor([500.0, 20.0]),
        x["reference"],
        x["motion"],
        x["audio"],
        torch.tensor([False, True]),
        torch.tensor([False, False]),
        (torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0])),
    )
    eps.square().mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    for prefix in ("reference_unet.down_blocks", "denoising_unet", "audio_projection.mlp", "audio_projection.null"):
        assert any(p.grad.abs().max() > 0 for n, p in trainable.items() if n.startswith(prefix)), prefix
    # zero-initialised output projections get a gradient, so the new layers start learning
    assert all(layer.proj_out.weight.grad.abs().max() > 0 for layer in model.temporal_layers.layers)
    assert all(a.to_out[0].weight.grad.abs().max() > 0 for a in model.cfg_conditioning.attentions)


def test_sd_layout_loader(tmp_path):
    config = get_preset(
        "tiny", latent_codec="vae", latent_channels=4, vae_block_out_channels=(8, 16), vae_norm_num_groups=4
    )
    torch.manual_seed(3)
    build_unet(config).save_pretrained(tmp_path / "sd" / "unet")
    build_vae(config).save_pretrained(tmp_path / "sd" / "vae")
    model = FadaModel.from_pretrained_sd(config, tmp_path / "sd")
    saved = UNet2DConditionModel.from_pretrained(tmp_path / "sd" / "unet").state_dict()
    for unet in (model.reference_unet, model.denoising_unet):
        assert all(torch.equal(v, saved[k]) for k, v in unet.state_dict().items())
    assert all(layer.proj_out.weight.abs().max() == 0 for layer in model.temporal_layers.layers)
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    latents = model.encode_images(images)
    assert latents.shape == (1, 2, 4, 16, 16) and model.decode_latents(latents).shape == (1, 2, 3, 32, 32)
    with pytest.raises(InputFileError, match="does not fit preset"):
        FadaModel.from_pretrained_sd(
            get_preset(
                "tiny",
                latent_channels=4,
                block_out_channels=(8, 32),
                norm_num_groups=4,
                latent_codec="vae",
                vae_block_out_channels=(8, 16),
                vae_norm_num_groups=4,
            ),
            tmp_path / "sd",
        )
    with pytest.raises(InputFileError, match="diffusers-layout"):
        FadaModel.from_pretrained_sd(config, tmp_path / "nowhere")


def test_checkpoint_round_trip(tmp_path):
    student = build_student_from_teacher(tiny_model(), "tokens")
    save_checkpoint(
        tmp_path / "ckpt",
        stage="student",
        mode="fast",
        config={"model": student.config.to_dict()},
        components=student.components(),
        step=0,
    )
    loaded = FadaModel.from_checkpoint(tmp_path / "ckpt", expect_stage="student").eval()
    assert loaded.config == student.config
    x = clip_inputs(student.config)
    args = (x["noisy"], torch.tensor([400.0]), x["reference"], x["motion"], x["audio"], [False], [False])
    with torch.no_grad():
        assert torch.equal(
            loaded(*args, (torch.tensor([5.0]), torch.tensor([2.0]))),
            student.eval()(*args, (torch.tensor([5.0]), torch.tensor([2.0]))),
        )


def test_condition_dropout_rates():
    from pipelines.training import sample_condition_dropout

    drop_audio, drop_reference = sample_condition_dropout(20_000, 0.10, 0.05, torch.Generator().manual_seed(0))
    assert torch.all(drop_audio[drop_reference])  # dropping the reference always drops the audio too
    assert abs(drop_reference.float().mean().item() - 0.05) < 0.01
    assert abs((drop_audio & ~drop_reference).float().mean().item() - 0.10) < 0.01


def test_student_gradients_are_the_same_with_gradient_checkpointing():
    x = clip_inputs(get_preset("tiny"), batch=2)
    args = (x["noisy"], torch.tensor([500.0, 20.0]), x["reference"], x["motion"], x["audio"])
    drops = (torch.tensor([False, True]), torch.tensor([False, False]))
    scales = (torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0]))

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = build_student_from_teacher(tiny_model(), "tokens").train()
        torch.manual_seed(1)
        with torch.no_grad():  # leave the zero inits so the CFG and temporal layers pass gradients on
            for p in [*model.cfg_conditioning.parameters(), *model.temporal_layers.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(*args, *drops, scales).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and any(n.startswith("cfg_conditioning.") for n in plain)
    for name, grad in plain.items():
        assert torch.allclose(checkpointed[name], grad, atol=1e-5), name


def test_reference_keys_projected_once_equal_the_repeated_context():
    """Projecting the reference once per clip gives the attention of the F-times repeated context,
    dropped references masked out, values and gradients."""
    from diffusers.models.attention_processor import Attention

    from pipelines.attention import FadaAttentionState, ReferenceAttnProcessor, attend

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    s, f, length, lr = 2, 3, 5, 7
    hidden = torch.randn(s * f, length, 8, requires_grad=True)
    reference = torch.randn(s, lr, 8, requires_grad=True)
    keep = torch.tensor([True, False])
    state = FadaAttentionState(num_frames=f, reference={"x": reference}, reference_keep=keep)
    out = ReferenceAttnProcessor("x")(attn, hidden, fada=state)

    context = torch.cat([hidden, reference.repeat_interleave(f, dim=0)], dim=1)
    own = torch.ones(s * f, length, dtype=torch.bool)
    mask = torch.cat([own, keep.repeat_interleave(f)[:, None].expand(-1, lr)], 1)
    expected = attend(attn, hidden, context, mask[:, None, None, :])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out[f:], attend(attn, hidden, context)[f:])  # the mask matters for clip 2
    grads = torch.autograd.grad(out.square().sum(), (hidden, reference, attn.to_k.weight))
    expected_grads = torch.autograd.grad(expected.square().sum(), (hidden, reference, attn.to_k.weight))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
