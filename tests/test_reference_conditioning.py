"""Reference conditioning options (docs/DESIGN.md §3c), the identity augmentation and the identity measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model import clip_inputs, tiny_model

from pipelines import fada_math
from pipelines.checkpoint import save_checkpoint
from pipelines.data import WindowDataset, identity_transform
from pipelines.distill import build_student_from_teacher
from pipelines.errors import UsageError
from pipelines.manifest import write_manifest
from pipelines.media import write_video
from pipelines.metrics.identity import fraction_of_range, identity_scores
from pipelines.model import FadaModel
from pipelines.model_config import ModelConfig, get_preset
from pipelines.schedulers import add_noise, alpha_bar_at, eps_from_x0, sd15_alphas_cumprod

RESIDUAL = {"prediction_type": "reference_residual"}


def test_prediction_type_is_checked_and_round_trips():
    config = get_preset("tiny", **RESIDUAL, reference_concat=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UsageError, match="prediction_type='x0' is not valid"):
        get_preset("tiny", prediction_type="x0")


def test_alpha_bar_at_integer_and_fractional_timesteps():
    alphas = sd15_alphas_cumprod(torch.float64)
    at = alpha_bar_at(alphas, torch.tensor([0.0, 961.0, 874.5, 1000.0]))
    assert at[0] == alphas[0] and at[1] == alphas[961] and at[3] == alphas[999]
    assert torch.isclose(at[2], (alphas[874] + alphas[875]) / 2)


def test_concat_widens_only_the_denoising_input_and_saves_like_any_config(tmp_path):
    model = tiny_model(reference_concat=True)
    c = model.config.latent_channels
    assert model.denoising_unet.conv_in.in_channels == 2 * c and model.reference_unet.conv_in.in_channels == c
    # the reference half of conv_in starts at zero; the rest equals the reference net's
    assert model.denoising_unet.conv_in.weight[:, c:].abs().max() == 0
    assert torch.equal(model.denoising_unet.conv_in.weight[:, :c], model.reference_unet.conv_in.weight)
    with torch.no_grad():  # the new input changes the output once trained
        model.denoising_unet.conv_in.weight[:, c:].normal_()
    save_checkpoint(tmp_path / "ckpt", stage="teacher", mode="teacher", config={"model": model.config.to_dict()},
                    components=model.components(), step=0)  # fmt: skip
    loaded = FadaModel.from_checkpoint(tmp_path / "ckpt", expect_stage="teacher").eval()
    assert loaded.config == model.config and loaded.denoising_unet.conv_in.in_channels == 2 * c
    x = clip_inputs(model.config, batch=2)
    args = (x["noisy"], torch.tensor([400.0, 900.0]), x["reference"], x["motion"], x["audio"])
    with torch.no_grad():
        kept = model(*args, [False, False], [False, False])
        assert torch.equal(loaded(*args, [False, False], [False, False]), kept)
        # dropping the reference zeroes its channels (and its attention): a different output
        dropped = model(*args, [True, True], [True, True])
    assert (kept - dropped).abs().max() > 1e-3


def test_untrained_residual_model_returns_the_portrait_in_every_branch():
    model = tiny_model(**RESIDUAL)
    x = clip_inputs(model.config, batch=2)
    alphas = sd15_alphas_cumprod(torch.float32)
    z0 = x["reference"][:, None].expand_as(x["noisy"])  # every frame is the portrait
    t = torch.tensor([961, 300])
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    noisy = add_noise(z0, eps, t, alphas)
    with torch.no_grad():
        reference = model.reference_features(x["reference"], x["motion"])
        tokens = model.audio_tokens(x["audio"])
        branches = model.denoise_multi_cfg(noisy, t.float(), tokens, reference)
        # all conditions dropped: the reference net is skipped, the skip is not
        dropped = model(noisy, t.float(), x["reference"], x["motion"], x["audio"], [True, True], [True, True])
    for branch in (*branches, dropped):
        assert torch.allclose(branch, eps, atol=1e-4)
    # reference CFG then adds nothing: no extrapolation towards cfg_r × the portrait
    guided = fada_math.multi_cfg(*branches, 6.5, 2.5)
    assert torch.allclose(guided, eps, atol=1e-3)


def test_residual_output_is_x0_minus_reference():
    model = tiny_model(**RESIDUAL)
    with torch.no_grad():
        model.denoising_unet.conv_out.bias.fill_(0.25)  # the net now predicts a constant residual
    x = clip_inputs(model.config)
    t = torch.tensor([500.0])
    with torch.no_grad():
        eps = model(x["noisy"], t, x["reference"], x["motion"], x["audio"], [False], [False])
    alpha = alpha_bar_at(sd15_alphas_cumprod(torch.float32), t)
    x0 = (x["noisy"] - (1 - alpha) ** 0.5 * eps) / alpha**0.5  # DDIM's x̂0 from that ε
    assert torch.allclose(x0, x["reference"][:, None] + 0.25, atol=1e-4)
    assert torch.allclose(eps_from_x0(x["noisy"], x0, alpha), eps, atol=1e-4)


def test_residual_student_starts_equal_to_its_teacher():
    teacher = tiny_model(**RESIDUAL, reference_concat=True)
    with torch.no_grad():
        for p in teacher.denoising_unet.conv_out.parameters():
            p.normal_(0, 0.1)
    student = build_student_from_teacher(teacher, "tokens").eval()
    x = clip_inputs(teacher.config, batch=2)
    args = (x["noisy"], torch.tensor([875.0, 250.0]), x["reference"], x["motion"], x["audio"], [False, True],
            [False, True])  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(student(*args), teacher(*args), atol=1e-6)


# --- identity augmentation ---------------------------------------------------------------------------


def test_identity_transform_is_one_transform_for_every_tensor():
    image = torch.rand(3, 32, 32) * 2 - 1
    frames, reference, motion = identity_transform(
        [image[None].repeat(4, 1, 1, 1), image, image[None].repeat(2, 1, 1, 1)], np.random.default_rng(5)
    )
    assert all(torch.equal(f, reference) for f in frames) and all(torch.equal(m, reference) for m in motion)
    assert (reference - image).abs().max() > 0.05 and reference.min() >= -1 and reference.max() <= 1
    other = identity_transform([image], np.random.default_rng(6))[0]
    assert (other - reference).abs().max() > 0.05  # another draw, another look


@pytest.fixture(scope="module")
def still_manifest(tmp_path_factory):
    """One 1-s clip of a still image (every frame equal) with speech, as a tier-A manifest."""
    folder = tmp_path_factory.mktemp("still")
    rng = np.random.default_rng(0)
    frame = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    write_video(folder / "still.mp4", np.repeat(frame[None], 25, axis=0), audio=rng.standard_normal(16_000) * 0.1)
    import pandas as pd

    row = {
        "clip_id": "still",
        "video_path": "still.mp4",
        "fps": 25.0,
        "n_frames": 25,
        "width": 32,
        "height": 32,
        "audio_sr": 16_000,
        "duration_s": 1.0,
        "source": "still.mp4",
        "start_s": 0.0,
        "end_s": 1.0,
        "tier": "A",
    }
    write_manifest(pd.DataFrame([row]), folder / "manifest.parquet", "test")  # fmt: skip
    return folder / "manifest.parquet"


def test_augmented_window_changes_target_reference_and_motion_alike(still_manifest):
    config = get_preset("tiny")
    plain = WindowDataset(still_manifest, config)
    augmented = WindowDataset(still_manifest, config, identity_augment=1.0)
    for seed in (1, 2, 3):
        before, after = plain[(0, seed)], augmented[(0, seed)]
        # a still clip: target, reference and motion are one image before the transform, so after it too
        assert torch.allclose(before["frames"], before["reference"][None].expand_as(before["frames"]), atol=0.02)
        assert torch.allclose(after["frames"], after["reference"][None].expand_as(after["frames"]), atol=0.02)
        assert torch.allclose(after["motion"], after["reference"][None].expand_as(after["motion"]), atol=0.02)
        assert (after["reference"] - before["reference"]).abs().mean() > 0.02
        assert torch.equal(after["audio_features"], before["audio_features"])  # the sound is not touched
    with pytest.raises(UsageError, match="identity_augment"):
        WindowDataset(still_manifest, config, identity_augment=1.5)


# --- the identity measure -----------------------------------------------------------------------------


def test_identity_is_highest_for_a_clip_against_its_own_portrait(tmp_path):
    from PIL import Image

    from pipelines.demo_data import DemoDataConfig, generate_demo_data
    from pipelines.media import read_video

    truth = generate_demo_data(tmp_path / "data", DemoDataConfig(clips=2, identities=2, size=64, seconds=1.0,
                                                                 clean_fraction=1.0), True)  # fmt: skip
    portraits = {i: np.asarray(Image.open(tmp_path / "data" / "identities" / f"{i}.png").convert("RGB"))
                 for i in truth["identity"].unique()}  # fmt: skip
    row = truth.iloc[0]
    frames, _ = read_video(tmp_path / "data" / "clips" / f"{row['clip_id']}.mp4")
    own = identity_scores(frames, portraits[row["identity"]])
    other_id = next(i for i in portraits if i != row["identity"])
    other = identity_scores(frames, portraits[other_id])
    assert own["identity_psnr16"] > other["identity_psnr16"] + 3
    assert own["identity_colour_de"] < other["identity_colour_de"]
    assert fraction_of_range(own["identity_psnr16"], other["identity_psnr16"], own["identity_psnr16"]) == 1.0


def test_portrait_mouth_r_follows_the_speech_not_the_reversed_speech(tmp_path):
    from PIL import Image

    from pipelines.demo_data import DemoDataConfig, generate_demo_data
    from pipelines.media import read_audio, read_video
    from pipelines.metrics.proxies import portrait_mouth_r

    truth = generate_demo_data(tmp_path / "data", DemoDataConfig(clips=1, identities=1, size=128, seconds=3.0,
                                                                 clean_fraction=1.0), True)  # fmt: skip
    row = truth.iloc[0]
    clip = tmp_path / "data" / "clips" / f"{row['clip_id']}.mp4"
    frames, _ = read_video(clip)
    audio = read_audio(clip)
    portrait = np.asarray(Image.open(tmp_path / "data" / "identities" / f"{row['identity']}.png").convert("RGB"))
    forward = portrait_mouth_r(frames, audio, portrait)
    backward = portrait_mouth_r(frames[::-1].copy(), audio, portrait)  # the mouth of the reversed speech
    assert forward > 0.5 and forward - backward > 0.3
    assert np.isnan(portrait_mouth_r(frames, np.zeros_like(audio), portrait))  # silence: nothing to follow


def test_motion_weights_favour_what_moves_and_average_one():
    from pipelines.training import motion_weights

    z0 = torch.zeros(2, 4, 3, 8, 8)
    z0[:, ::2, :, 2:4, 2:4] = 1.0  # a 2×2 "mouth" that opens on every other frame
    weights = motion_weights(z0, alpha=4.0)
    assert weights.shape == (2, 1, 1, 8, 8)
    assert torch.allclose(weights.mean(dim=(-2, -1)), torch.ones(2, 1, 1))
    assert weights[0, 0, 0, 2, 2] > 10 * weights[0, 0, 0, 6, 6] > 0
    assert torch.equal(motion_weights(z0[:, :1], 4.0), torch.ones(2, 1, 1, 8, 8))  # single frames: plain loss


def test_distillation_weighs_its_loss_by_motion_only_when_asked_and_where_things_move():
    """Both terms of the students' loss take the motion weights: a still window scores the same with α 4 as
    with none; a window with a moving patch does not; a negative α is refused by the config."""
    from pipelines.distill import DistillConfig, distill_loss

    config = get_preset("tiny")
    torch.manual_seed(0)
    teacher = FadaModel.from_config(config).eval().requires_grad_(False)
    student = build_student_from_teacher(teacher, "none")
    b, f, m, size = 1, config.frames_per_clip, config.motion_frames, config.sample_size
    still = torch.rand(b, 1, 3, size, size).expand(b, f, 3, size, size).clone()
    moving = still.clone()
    moving[:, ::2, :, 10:16, 10:16] = 0.0  # a dark "mouth" that opens on every other frame

    def losses(frames, alpha):
        batch = {"frames": frames, "reference": still[:, 0], "motion": still[:, :m],
                 "audio_features": torch.zeros(b, f, config.audio_window_size, config.audio_feature_dim)}  # fmt: skip
        train = DistillConfig(mode="balanced", solver_steps=2, motion_loss_weight=alpha)
        _, record = distill_loss(
            student, teacher, batch, sd15_alphas_cumprod(), torch.Generator().manual_seed(3), train
        )
        return torch.stack([record["loss_distill"], record["loss_gt"]])

    assert torch.allclose(losses(still, 4.0), losses(still, 0.0))
    assert not torch.allclose(losses(moving, 4.0), losses(moving, 0.0))
    with pytest.raises(UsageError, match="motion_loss_weight"):
        DistillConfig(motion_loss_weight=-1.0)


def test_audio_time_embedding_starts_silent_then_follows_the_audio(tmp_path):
    model = tiny_model(audio_time_embedding=True)
    projection = model.audio_projection.time_projection
    assert projection is not None and projection.weight.abs().max() == 0
    x = clip_inputs(model.config, batch=2)
    args = (x["noisy"], torch.tensor([500.0, 100.0]), x["reference"], x["motion"])
    keep = (torch.tensor([False, False]), torch.tensor([False, False]))
    with torch.no_grad():
        before = model(*args, x["audio"], *keep)
        model.audio_projection.time_projection = None  # the same weights without the path: the same output
        assert torch.equal(model(*args, x["audio"], *keep), before)
        model.audio_projection.time_projection = projection
        projection.weight.normal_(0, 0.5)
        moved = model(*args, x["audio"], *keep)
        louder = model(*args, 2 * x["audio"], *keep)
        dropped = model(*args, x["audio"], torch.tensor([True, True]), keep[1])
    assert (moved - before).abs().max() > 1e-3 and (louder - moved).abs().max() > 1e-3
    assert (dropped - moved).abs().max() > 1e-3  # the null audio's shift differs
    save_checkpoint(tmp_path / "ckpt", stage="teacher", mode="teacher", config={"model": model.config.to_dict()},
                    components=model.components(), step=0)  # fmt: skip
    loaded = FadaModel.from_checkpoint(tmp_path / "ckpt", expect_stage="teacher").eval()
    with torch.no_grad():
        assert torch.equal(loaded(*args, x["audio"], *keep), moved)
    student = build_student_from_teacher(model, "time-embed").eval()  # shares the hook with the CFG shift
    with torch.no_grad():
        assert torch.allclose(student(*args, x["audio"], *keep), moved, atol=1e-6)
