"""Hallo's side of `bench/hallo_equivalence.py`: run in HALLO's OWN environment, never imported by fada.

    PYTHONPATH=HALLO_SRC:STUB PY bench/hallo_side.py WORK [--reference-fp32] [--reference-cond-tokens]
    PYTHONPATH=HALLO_SRC:STUB PY bench/hallo_side.py --fixture tests/data/hallo_forward.safetensors \
        tests/data/hallo_tiny_keys.json        # the default tests' stored run of Hallo's code (`write_fixture`)

Builds Hallo's networks exactly as its `scripts/inference.py` does (`UNet2DConditionModel.from_pretrained`,
`UNet3DConditionModel.from_pretrained_2d` with `configs/inference/default.yaml`'s unet_additional_kwargs,
`FaceLocator`, `ImageProjModel`, `AudioProjModel`, gradient checkpointing on, no `.eval()`), at a small size
(fada's `hallo-tiny` preset), re-randomises every parameter (the zero-initialised face-locator output, audio
zero convs and motion-module projections included, or the comparison would pass trivially), and writes into
WORK: a release folder (`pretrained/hallo/net.pth`, the UNet and VAE configs, a tiny random wav2vec2), the
key names and shapes of net.pth, and inputs/outputs (safetensors) of (a) one denoising-UNet forward at two
timesteps and (b) `FaceAnimatePipeline` sampling 40 DDIM steps with guidance 1 and 3.5 (latents after
every step).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from hallo.animate.face_animate import FaceAnimatePipeline
from hallo.models.audio_proj import AudioProjModel
from hallo.models.face_locator import FaceLocator
from hallo.models.image_proj import ImageProjModel
from hallo.models.mutual_self_attention import ReferenceAttentionControl
from hallo.models.unet_2d_condition import UNet2DConditionModel
from hallo.models.unet_3d import UNet3DConditionModel
from omegaconf import OmegaConf
from safetensors.torch import save_file

# fada's hallo-tiny preset (pipelines/model_config.py), written as Hallo's config files
UNET = dict(sample_size=8, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[32, 64, 64, 64],
            layers_per_block=1, cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32)  # fmt: skip
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 32, 32, 32], layers_per_block=1,
           norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           sample_size=64, scaling_factor=0.18215)  # fmt: skip
WAV2VEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               conv_dim=[16, 16], conv_kernel=[10, 3], conv_stride=[5, 2], num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4, feat_extract_norm="group", do_stable_layer_norm=False)  # fmt: skip
SIZE, F, M, WINDOW = 64, 4, 2, 5
FACE_LOCATOR = (4, 8, 16, 32)
IDENTITY_TOKENS, AUDIO_TOKENS, AUDIO_HIDDEN = 4, 4, 32


def rerandomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random (so that no zero-initialised layer hides a difference), in name order."""
    for name, p in sorted(module.named_parameters(), key=lambda item: item[0]):
        with torch.no_grad():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


def hallo_audio_features(folder: Path, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from hallo.models.wav2vec import Wav2VecModel
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)  # fmt: skip
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
    encoder = Wav2VecModel.from_pretrained(folder, local_files_only=True)
    speech = 0.1 * torch.randn(20_800, generator=generator)  # 1.3 s at 16 kHz
    values = torch.from_numpy(extractor(speech.numpy(), sampling_rate=16000).input_values[0]).float()
    seq_len = math.ceil(len(values) / 16000 * 25)
    if seq_len % F:
        values = torch.nn.functional.pad(values, (0, (F - seq_len % F) * 640))
        seq_len += F - seq_len % F
    with torch.no_grad():
        hidden = encoder(values[None], seq_len=seq_len, output_hidden_states=True).hidden_states[1:]
    return {"speech": speech, "audio_features": torch.stack(hidden, dim=1)[0].transpose(0, 1)}  # (T, L, D)


def patch_reference_fp32() -> None:
    """Hallo's `ReferenceAttentionControl.update(writer, dtype=torch.float16)` casts the reference features to
    fp16 even in an fp32 run (a no-op in its fp16 inference); keep them in fp32 to compare the structure."""
    update = ReferenceAttentionControl.update
    ReferenceAttentionControl.update = lambda self, writer, dtype=torch.float32: update(self, writer, dtype)


def build_networks(pretrained: Path, generator: torch.Generator, reference_cond_tokens: bool):
    """The release folder's config files and VAE (random), and Hallo's Net as scripts/inference.py builds it:
    (cfg, vae, {net.pth prefix: module}), every module frozen."""
    # the release folder's config files and component weights (random; the caller sets the Net's)
    unet_dir = pretrained / "stable-diffusion-v1-5" / "unet"
    UNet2DConditionModel(**{k: v for k, v in UNET.items() if k != "out_channels"}).save_pretrained(unet_dir)
    config = json.loads((unet_dir / "config.json").read_text())
    config.update(out_channels=4, center_input_sample=False)  # as in SD1.5's unet/config.json
    (unet_dir / "config.json").write_text(json.dumps(config))
    vae = AutoencoderKL(**VAE)
    rerandomise(vae, generator)
    vae.save_pretrained(pretrained / "sd-vae-ft-mse")
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC)).save_pretrained(pretrained / "wav2vec" / "wav2vec2-base-960h")
    (pretrained / "face_analysis" / "models").mkdir(parents=True, exist_ok=True)

    # Hallo's Net, as scripts/inference.py builds it
    cfg = OmegaConf.load("configs/inference/default.yaml")
    cfg.unet_additional_kwargs.audio_attention_dim = UNET["cross_attention_dim"]  # 768 at full size, as the UNet's
    reference_unet = UNet2DConditionModel.from_pretrained(pretrained / "stable-diffusion-v1-5", subfolder="unet")
    denoising_unet = UNet3DConditionModel.from_pretrained_2d(
        pretrained / "stable-diffusion-v1-5", pretrained / "motion_module" / "none.ckpt", subfolder="unet",
        unet_additional_kwargs=OmegaConf.to_container(cfg.unet_additional_kwargs), use_landmark=False,
    )  # fmt: skip
    face_locator = FaceLocator(
        conditioning_embedding_channels=UNET["block_out_channels"][0], block_out_channels=FACE_LOCATOR
    )
    image_proj = ImageProjModel(
        cross_attention_dim=32, clip_embeddings_dim=512, clip_extra_context_tokens=IDENTITY_TOKENS
    )
    audio_proj = AudioProjModel(seq_len=WINDOW, blocks=WAV2VEC["num_hidden_layers"], channels=WAV2VEC["hidden_size"],
                                intermediate_dim=AUDIO_HIDDEN, output_dim=32, context_tokens=AUDIO_TOKENS)  # fmt: skip
    reference_unet.enable_gradient_checkpointing()
    denoising_unet.enable_gradient_checkpointing()
    if reference_cond_tokens:
        # With CFG, FaceAnimatePipeline runs the reference net on [ref, motion…] × 2 with identity tokens [uncond, cond]
        # tiled (`encoder_hidden_states.repeat(tmp, 1, 1)`), so image j reads tokens j mod 2, and the reader tiles
        # the two reference images across the frames (bank_fea's repeat): half the conditional frames attend to a
        # reference computed with the null identity. Give every image the conditional tokens, as fada does.
        def conditional_tokens(module, args, kwargs):
            tokens = kwargs.get("encoder_hidden_states")
            if tokens is not None and tokens.shape[0] == 2:
                kwargs["encoder_hidden_states"] = tokens[1:].expand_as(tokens)
            return args, kwargs

        reference_unet.register_forward_pre_hook(conditional_tokens, with_kwargs=True)
    modules = {"reference_unet": reference_unet, "denoising_unet": denoising_unet, "face_locator": face_locator,
               "imageproj": image_proj, "audioproj": audio_proj}  # fmt: skip
    for module in modules.values():
        module.requires_grad_(False)
    return cfg, vae, modules


def run_hallo(cfg, vae, modules: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs (from ``generator``) and Hallo's outputs: (a) one denoising-UNet forward at t = 999 and 500,
    (b) 40 DDIM steps with guidance 1 and 3.5 (latents after every step)."""
    reference_unet, denoising_unet, face_locator = (modules[k] for k in ("reference_unet", "denoising_unet",
                                                                         "face_locator"))  # fmt: skip
    image_proj, audio_proj = modules["imageproj"], modules["audioproj"]
    # inputs: reference + motion-frame pixels, face embedding, face region, masks, audio windows
    h = SIZE // 8
    images = torch.rand(1, 1 + M, 3, SIZE, SIZE, generator=generator) * 2 - 1  # (1, 1+M, 3, H, W) in [-1, 1]
    face_emb = torch.randn(1, 512, generator=generator)
    region = (torch.rand(1, 3, SIZE, SIZE, generator=generator) > 0.5).float()
    masks = {
        kind: [torch.rand(1, (h // 2**i) ** 2, generator=generator) for i in range(4)]
        for kind in ("full", "face", "lip")
    }
    audio = torch.randn(1, F, WINDOW, WAV2VEC["num_hidden_layers"], WAV2VEC["hidden_size"], generator=generator)
    noisy = torch.randn(1, 4, F, h, h, generator=generator)
    tensors = {"images": images, "face_emb": face_emb, "region": region, "audio": audio, "noisy": noisy}
    tensors |= {f"mask_{kind}_{i}": m for kind, levels in masks.items() for i, m in enumerate(levels)}

    with torch.no_grad():
        ref_latents = vae.encode(images[0]).latent_dist.mean * 0.18215  # (1+M, 4, h, w)
        tensors["ref_latents"] = ref_latents
        tokens = audio_proj(audio)  # (1, F, N, D)
        identity = image_proj(face_emb)  # (1, n, D)
        locator_in = region.unsqueeze(1).repeat(1, F, 1, 1, 1).transpose(1, 2)  # (1, 3, F, H, W)
        mask_feature = face_locator(locator_in)
        level_masks = {kind: [m.repeat(F, 1) for m in levels] for kind, levels in masks.items()}
        # (a) one conditional denoising-UNet forward (no CFG), as the pipeline's first step runs it
        for t in (999, 500):
            writer = ReferenceAttentionControl(reference_unet, mode="write", fusion_blocks="full")
            reader = ReferenceAttentionControl(denoising_unet, mode="read", fusion_blocks="full")
            reference_unet(ref_latents, torch.zeros(()), encoder_hidden_states=identity, return_dict=False)
            reader.update(writer)
            v = denoising_unet(noisy, t, encoder_hidden_states=identity, mask_cond_fea=mask_feature,
                               full_mask=level_masks["full"], face_mask=level_masks["face"],
                               lip_mask=level_masks["lip"],
                               audio_embedding=tokens, motion_scale=[1.0, 1.0, 1.0], return_dict=False)[0]  # fmt: skip
            tensors[f"v_t{t}"] = v
            reader.clear()
            writer.clear()
        # (b) Hallo's sampler: DDIM, v-prediction, zero SNR, trailing, 40 steps; guidance 1 (no CFG) and 3.5
        sched_kwargs = OmegaConf.to_container(cfg.noise_scheduler_kwargs)
        sched_kwargs.update(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
        pipeline = FaceAnimatePipeline(vae=vae, reference_unet=reference_unet, denoising_unet=denoising_unet,
                                       face_locator=face_locator, scheduler=DDIMScheduler(**sched_kwargs),
                                       image_proj=image_proj)  # fmt: skip
        # guidance 1: Hallo's pipeline always concatenates the unconditional audio (it needs CFG > 1), so the
        # conditional-only loop runs here with the same calls: reference net once, then UNet + scheduler.step
        scheduler = DDIMScheduler(**sched_kwargs)
        scheduler.set_timesteps(40)
        latents = [torch.randn(1, 4, F, h, h, generator=torch.manual_seed(42))]
        writer = ReferenceAttentionControl(reference_unet, mode="write", fusion_blocks="full")
        reader = ReferenceAttentionControl(denoising_unet, mode="read", fusion_blocks="full")
        reference_unet(ref_latents, torch.zeros(()), encoder_hidden_states=identity, return_dict=False)
        reader.update(writer)
        for t in scheduler.timesteps:
            v = denoising_unet(latents[-1], t, encoder_hidden_states=identity, mask_cond_fea=mask_feature,
                               full_mask=level_masks["full"], face_mask=level_masks["face"],
                               lip_mask=level_masks["lip"],
                               audio_embedding=tokens, motion_scale=[1.0, 1.0, 1.0], return_dict=False)[0]  # fmt: skip
            latents.append(scheduler.step(v, t, latents[-1], eta=0.0, return_dict=False)[0])
        reader.clear()
        writer.clear()
        tensors["ddim_cfg1.0"] = torch.stack(latents)  # (41, 1, 4, F, h, w): initial, then after each step
        # guidance 3.5: Hallo's own FaceAnimatePipeline
        latents = []
        original = pipeline.prepare_latents

        def prepare(*args, **kwargs):
            out = original(*args, **kwargs)
            latents.append(out.clone())
            return out

        pipeline.prepare_latents = prepare
        pipeline(ref_image=images, audio_tensor=tokens, face_emb=face_emb, face_mask=region,
                 pixel_values_full_mask=level_masks["full"], pixel_values_face_mask=level_masks["face"],
                 pixel_values_lip_mask=level_masks["lip"], width=SIZE, height=SIZE, video_length=F,
                 num_inference_steps=40, guidance_scale=3.5, generator=torch.manual_seed(42),
                 motion_scale=[1.0, 1.0, 1.0], callback=lambda i, t, z: latents.append(z.clone()))  # fmt: skip
        tensors["ddim_cfg3.5"] = torch.stack(latents)
    return tensors


def main(work: Path, reference_fp32: bool, reference_cond_tokens: bool) -> None:
    if reference_fp32:
        patch_reference_fp32()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1234)
    pretrained = work / "pretrained"
    cfg, vae, modules = build_networks(pretrained, generator, reference_cond_tokens)
    for module in modules.values():
        rerandomise(module, generator)
    state = {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in m.state_dict().items()}
    (pretrained / "hallo").mkdir(parents=True, exist_ok=True)
    torch.save(state, pretrained / "hallo" / "net.pth")
    (work / "hallo_keys.json").write_text(json.dumps({k: list(v.shape) for k, v in state.items()}))

    tensors = run_hallo(cfg, vae, modules, generator)
    # (c) audio features: Hallo's AudioProcessor steps (feature extractor, pad to whole clips, Wav2VecModel with
    # seq_len, hidden_states[1:]) on 1.3 s of noise, without its vocal separator
    tensors |= hallo_audio_features(pretrained / "wav2vec" / "wav2vec2-base-960h", generator)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(work / "hallo_io.safetensors"))
    meta = {
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "transformers": __import__("transformers").__version__,
        "denoising_unet_training_mode": modules["denoising_unet"].training,
        "reference_unet_training_mode": modules["reference_unet"].training,
        "net_keys": len(state),
        "frames": F,
        "motion_frames": M,
        "size": SIZE,
        "reference_features": "fp32 (update() patched)" if reference_fp32 else "fp16 (update()'s default)",
        "reference_tokens_with_cfg": "conditional for every image (patched)"
        if reference_cond_tokens
        else "tiled [u, c]",
    }
    (work / "hallo_meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


def recipe_weights(keys: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The same recipe as `tests/test_hallo.py::recipe_weights` (keep the two equal; the test checks the sums)."""
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


def write_fixture(out: Path, keys_file: Path) -> None:
    """tests/data/hallo_forward.safetensors: `run_hallo` on Hallo's Net holding `recipe_weights` of the hallo-tiny
    keys, with the equivalence bench's two patches (fp32 reference features, conditional reference tokens under
    CFG). Kept: the inputs the denoising net sees, v at t = 999 and 500, and the initial noise and first two of 40
    DDIM steps of Hallo's pipeline with guidance 3.5; and each recipe tensor's sum of |w| (float64, key order)."""
    import tempfile

    patch_reference_fp32()
    torch.manual_seed(0)
    keys = json.loads(keys_file.read_text())
    state = recipe_weights(keys)
    with tempfile.TemporaryDirectory() as tmp:
        generator = torch.Generator().manual_seed(1234)
        cfg, vae, modules = build_networks(Path(tmp) / "pretrained", generator, reference_cond_tokens=True)
        own = {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in m.state_dict().items()}
        if {k: list(v.shape) for k, v in own.items()} != keys:
            raise SystemExit(f"Hallo's Net at the hallo-tiny sizes does not have the keys of {keys_file}")
        for prefix, module in modules.items():
            module.load_state_dict({k.removeprefix(f"{prefix}."): v for k, v in state.items()
                                    if k.startswith(f"{prefix}.")}, strict=True)  # fmt: skip
        tensors = run_hallo(cfg, vae, modules, generator)
    kept = {k: v for k, v in tensors.items() if k.startswith(("mask_", "v_t")) or k in ("face_emb", "audio", "noisy")}
    kept["ref_latents"] = tensors["ref_latents"]  # the pixels stay here: both sides start from the same latents
    kept["region"] = tensors["region"].to(torch.uint8)  # a 0/1 mask
    kept["ddim_cfg3.5"] = tensors["ddim_cfg3.5"][:3]  # Hallo's own pipeline, all three branches in play
    kept["weight_abs_sums"] = torch.tensor(
        [state[k].double().abs().sum().item() for k in sorted(state)], dtype=torch.float64
    )
    metadata = {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                "written_by": "bench/hallo_side.py --fixture", "keys": str(keys_file.name)}  # fmt: skip
    save_file({k: v.contiguous() for k, v in kept.items()}, str(out), metadata=metadata)
    print(json.dumps(metadata | {"bytes": out.stat().st_size}))


if __name__ == "__main__":
    if sys.argv[1] == "--fixture":
        write_fixture(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]), "--reference-fp32" in sys.argv[2:], "--reference-cond-tokens" in sys.argv[2:])
