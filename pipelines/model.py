"""`FadaModel`: the dual-UNet audio-driven portrait model shared by the teacher and the student (DESIGN §3).

Components (each a diffusers `ModelMixin`, saved as config.json + safetensors by `save_checkpoint`):
`reference_unet` and `denoising_unet` (plain `UNet2DConditionModel`s, loadable on their own),
`temporal_layers`, `audio_projection` (with the learned null audio), `cfg_conditioning` (students
only) and `vae` (latent configs only). The extra behaviour — reference attention, audio attention,
the CFG layer, temporal attention — is installed with attention processors and forward hooks
(`pipelines.attention`), never by replacing a `forward`.

Condition states (DESIGN §3): ε_a = (audio, reference), ε_r = (null audio, reference),
ε_b = (null audio, no reference); `denoise` takes per-sample `drop_audio` / `drop_reference`, so
the three come out of one batched forward (`denoise_multi_cfg`). The drop flags live on the host
(`host_flags`): what to run and the NFE count are decided from them without waiting for the GPU,
and the device masks are made from them with one non-blocking copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from pipelines.attention import (
    CfgConditioning,
    FadaAttentionState,
    TemporalLayers,
    attach_temporal_layers,
    cross_attention_layers,
    install_denoising_processors,
    install_reference_recorder,
)
from pipelines.audio import AudioProjection
from pipelines.errors import InputFileError, UsageError
from pipelines.model_config import ModelConfig


@dataclass(frozen=True)
class ReferenceFeatures:
    """Hidden states entering each self-attention of the reference net, for B clips.

    `features[layer]` is (B, (1+M)·L, C): the reference image and the M motion frames side by side.
    """

    features: dict[str, torch.Tensor]
    batch_size: int

    def tile(self, repeats: int) -> ReferenceFeatures:
        """The same features for `repeats`·B samples, laid out as `torch.cat([x] * repeats)`."""
        if repeats == 1:
            return self
        return ReferenceFeatures(
            {k: v.repeat(repeats, 1, 1) for k, v in self.features.items()}, self.batch_size * repeats
        )


def host_flags(flags, batch_size: int) -> torch.Tensor:
    """Per-sample condition drops as a (B,) bool tensor on the CPU (the host).

    ``flags``: a bool, a sequence of bools, or a tensor; a single value broadcasts to ``batch_size``.
    Decisions made from the result (`all`, `any`, the NFE count) cost no device sync. A tensor on an
    accelerator is copied back, which waits for it: pass host flags (training and sampling do).
    """
    flags = torch.as_tensor(flags, dtype=torch.bool)  # a no-op for a CPU bool tensor
    if flags.device.type != "cpu":
        flags = flags.cpu()
    return flags.reshape(-1).expand(batch_size) if flags.numel() == 1 else flags.reshape(batch_size)


def device_values(values, batch_size: int, device: torch.device) -> torch.Tensor:
    """Per-sample numbers (timesteps, CFG scales) as a (B,) float32 tensor on ``device``; one number is
    filled in there (no blocking host-to-device copy), a tensor of one value or B broadcasts."""
    if not torch.is_tensor(values):
        return torch.full((batch_size,), float(values), dtype=torch.float32, device=device)
    return values.to(device, torch.float32, non_blocking=True).reshape(-1).expand(batch_size)


class _TimeEmbedShift:
    """Forward hook adding the student's CFG-scale embedding to the UNet timestep embedding ('time-embed')."""

    def __init__(self):
        self.shift: torch.Tensor | None = None  # (B·F, D_time) during a `denoise` call, else None

    def __call__(self, module, args, output):
        return output if self.shift is None else output + self.shift.to(output.dtype)


class FadaModel(torch.nn.Module):
    """Reference net + denoising net (+ temporal layers, audio projection, CFG conditioning, codec)."""

    def __init__(
        self,
        config: ModelConfig,
        reference_unet: UNet2DConditionModel,
        denoising_unet: UNet2DConditionModel,
        temporal_layers: TemporalLayers,
        audio_projection: AudioProjection,
        cfg_conditioning: CfgConditioning | None = None,
        vae: AutoencoderKL | None = None,
    ):
        super().__init__()
        self.config = config
        self.reference_unet = reference_unet
        self.denoising_unet = denoising_unet
        self.temporal_layers = temporal_layers
        self.audio_projection = audio_projection
        self.cfg_conditioning = cfg_conditioning
        self.vae = vae
        if vae is not None:
            vae.requires_grad_(False)  # the codec is frozen (SD1.5 VAE)
        install_reference_recorder(reference_unet)
        freeze_reference_tail(reference_unet)
        cfg_attentions = None
        if cfg_conditioning is not None and config.cfg_conditioning in ("tokens", "layer"):
            cfg_attentions = list(cfg_conditioning.attentions)
        install_denoising_processors(denoising_unet, cfg_attentions)
        attach_temporal_layers(denoising_unet, temporal_layers)
        self._time_shift = _TimeEmbedShift()
        denoising_unet.time_embedding.register_forward_hook(self._time_shift)
        self.nfe_counter = 0  # denoising-net evaluations, one per distinct condition state per call (NFE-D)
        self.denoising_net_calls = 0  # forward passes of the denoising net
        self.reference_net_calls = 0  # forward passes of the reference net

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ModelConfig) -> FadaModel:
        """A freshly initialised model (temporal and CFG output projections zero).

        The reference net starts as an exact copy of the denoising net, as both do when they are
        initialised from the same SD1.5 UNet (`from_pretrained_sd`; DESIGN §3b).
        """
        denoising_unet = build_unet(config)
        reference_unet = build_unet(config)
        reference_unet.load_state_dict(denoising_unet.state_dict())
        temporal = TemporalLayers(
            channels=TemporalLayers.channels_of(denoising_unet),
            num_heads=config.temporal_heads,
            norm_num_groups=config.norm_num_groups,
            max_frames=config.temporal_max_frames,
        )
        audio_projection = AudioProjection(
            feature_dim=config.audio_feature_dim,
            window=config.audio_window_size,
            hidden_dim=config.audio_hidden_dim,
            n_tokens=config.audio_tokens,
            dim=config.cross_attention_dim,
        )
        cfg = build_cfg_conditioning(config, denoising_unet)
        vae = build_vae(config) if config.latent_codec == "vae" else None
        return cls(config, reference_unet, denoising_unet, temporal, audio_projection, cfg, vae)

    @classmethod
    def from_pretrained_sd(cls, config: ModelConfig, sd_path: str | Path) -> FadaModel:
        """Both UNets (and the VAE of a latent config) from a diffusers-layout SD1.5 folder.

        `sd_path/unet` and `sd_path/vae` (safetensors); the new layers (temporal, audio projection,
        CFG) stay freshly initialised. Shapes that differ from `config` are an `InputFileError`.
        """
        model = cls.from_config(config)
        sd_path = Path(sd_path)
        unet_state = _load_pretrained(UNet2DConditionModel, sd_path / "unet").state_dict()
        _check_shapes(unet_state, model.denoising_unet.state_dict(), sd_path / "unet", config)
        model.reference_unet.load_state_dict(unet_state)
        model.denoising_unet.load_state_dict(unet_state)
        if config.latent_codec == "vae":
            vae_state = _load_pretrained(AutoencoderKL, sd_path / "vae").state_dict()
            _check_shapes(vae_state, model.vae.state_dict(), sd_path / "vae", config)
            model.vae.load_state_dict(vae_state)
        return model

    @classmethod
    def from_checkpoint(cls, path, expect_stage=None, device="cpu", dtype=torch.float32) -> FadaModel:
        """Rebuild from a checkpoint folder (DESIGN §5); the model config is `config["model"]`."""
        from pipelines.checkpoint import load_checkpoint_info, load_component

        info = load_checkpoint_info(path, expect_stage)
        config = ModelConfig.from_dict(info.config.get("model", info.config))
        parts = {
            "reference_unet": UNet2DConditionModel,
            "denoising_unet": UNet2DConditionModel,
            "temporal_layers": TemporalLayers,
            "audio_projection": AudioProjection,
        }
        if config.cfg_conditioning != "none":
            parts["cfg_conditioning"] = CfgConditioning
        if config.latent_codec == "vae":
            parts["vae"] = AutoencoderKL
        loaded = {name: load_component(path, name, part) for name, part in parts.items()}
        return cls(config, **loaded).to(device=torch.device(device), dtype=dtype)

    def components(self) -> dict:
        """The `ModelMixin` parts, by sub-folder name, for `save_checkpoint`."""
        parts = {
            "reference_unet": self.reference_unet,
            "denoising_unet": self.denoising_unet,
            "temporal_layers": self.temporal_layers,
            "audio_projection": self.audio_projection,
            "cfg_conditioning": self.cfg_conditioning,
            "vae": self.vae,
        }
        return {name: part for name, part in parts.items() if part is not None}

    @property
    def dtype(self) -> torch.dtype:
        return self.denoising_unet.dtype

    @property
    def device(self) -> torch.device:
        return self.denoising_unet.device

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory, one more forward).

        Both UNets (diffusers' checkpointing of their resnets and transformer blocks) and every temporal
        layer (`TemporalHook`); non-reentrant `torch.utils.checkpoint`, so the loss and the gradients are
        those of a plain forward.
        """
        self.reference_unet.enable_gradient_checkpointing()
        self.denoising_unet.enable_gradient_checkpointing()
        self.temporal_layers.enable_gradient_checkpointing()

    def reset_counters(self) -> None:
        self.nfe_counter = self.denoising_net_calls = self.reference_net_calls = 0

    # --- codec ----------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (..., 3, H, W) → latents (..., C, h, w); identity in pixel space.

        The VAE path uses the posterior mean (deterministic) times the scaling factor 0.18215.
        """
        if self.vae is None:
            return images
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:]).to(self.vae.dtype)  # (N, 3, H, W)
        with torch.no_grad():
            latents = self.vae.encode(flat).latent_dist.mean * self.config.vae_scaling_factor
        return latents.reshape(*lead, *latents.shape[1:])  # (..., C, h, w)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (..., C, h, w) → images (..., 3, H, W), roughly in [-1, 1] (not clamped)."""
        if self.vae is None:
            return latents
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:]).to(self.vae.dtype) / self.config.vae_scaling_factor
        with torch.no_grad():
            images = self.vae.decode(flat).sample  # (N, 3, H, W)
        return images.reshape(*lead, *images.shape[1:])

    # --- conditions -----------------------------------------------------------------------------

    def reference_features(self, reference_latent: torch.Tensor, motion_latents: torch.Tensor | None = None):
        """Run the reference net ONCE on the reference and M motion latents → `ReferenceFeatures`.

        reference_latent (B, C, h, w); motion_latents (B, M, C, h, w), or None for a first clip
        (the reference repeated `config.motion_frames` times). The caller caches the result.
        """
        b = reference_latent.shape[0]
        if motion_latents is None:  # the net sees each image alone: run it once and repeat its features
            features = self._run_reference_net(reference_latent[:, None])  # (B, L, C) per layer
            n_images = 1 + self.config.motion_frames
            return ReferenceFeatures({name: h.repeat(1, n_images, 1) for name, h in features.items()}, b)
        images = torch.cat([reference_latent[:, None], motion_latents], dim=1)  # (B, 1+M, C, h, w)
        return ReferenceFeatures(self._run_reference_net(images), b)

    def _run_reference_net(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, n, C, h, w) clean latents → layer name → (B, n·L, C): the attn1 inputs of the n images side by side."""
        b, n_images = images.shape[:2]
        flat = images.reshape(b * n_images, *images.shape[2:]).to(self.dtype)  # (B·n, C, h, w)
        timesteps = torch.zeros(flat.shape[0], device=flat.device)  # a clean image: t = 0
        context = flat.new_zeros(flat.shape[0], 1, self.config.cross_attention_dim)  # no text/audio for the reference
        state = FadaAttentionState(num_frames=1, record={})
        self.reference_unet(flat, timesteps, context, cross_attention_kwargs={"fada": state})
        self.reference_net_calls += 1
        return {
            name: h.reshape(b, n_images * h.shape[1], h.shape[2])  # (B·n, L, C) → (B, n·L, C)
            for name, h in state.record.items()
        }

    def audio_tokens(self, audio_features: torch.Tensor) -> torch.Tensor:
        """(B, F, W, D_feat) audio features → (B, F, N, D_cross) audio tokens."""
        return self.audio_projection(audio_features.to(self.dtype))

    # --- denoising ------------------------------------------------------------------------------

    def denoise(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        audio_tokens: torch.Tensor,
        reference_features: ReferenceFeatures | None,
        drop_audio: torch.Tensor,
        drop_reference: torch.Tensor,
        cfg_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """ε prediction for noisy latents (B, F, C, h, w) at `timesteps` (B,) (float; a scalar broadcasts).

        `audio_tokens` (B', F, N, D) and `reference_features` (B' clips) with B' dividing B are tiled
        as `torch.cat([x] * (B // B'))`. Per sample, `drop_audio` swaps in the learned null audio and
        `drop_reference` removes the reference path (`reference_features=None`: dropped for all).
        `cfg_scales` = (cfg_a, cfg_r), each (B,), for a student with CFG conditioning; None there
        means (1, 1). Counts one NFE per distinct (drop_audio, drop_reference) state in the batch.
        The drop flags are read on the host (`host_flags`); pass them as CPU tensors or bools.
        """
        b, f = noisy.shape[:2]
        device = noisy.device
        drop_audio, drop_reference = host_flags(drop_audio, b), host_flags(drop_reference, b)  # (B,) bool, host
        if reference_features is None:
            drop_reference = torch.ones_like(drop_reference)
        # the device's masks: one non-blocking copy of both (B,) rows
        audio_mask, reference_mask = torch.stack([drop_audio, drop_reference]).to(device, non_blocking=True)

        # 1. audio tokens, null where dropped, frames folded into the batch
        tokens = _tile(audio_tokens, b, "audio_tokens").to(self.dtype)  # (B, F, N, D)
        null = self.audio_projection.null_tokens.to(tokens.dtype)
        tokens = torch.where(audio_mask[:, None, None, None], null, tokens)
        tokens = tokens.reshape(b * f, *tokens.shape[2:])  # (B·F, N, D)

        # 2. reference features, masked per sample where dropped
        state = FadaAttentionState(num_frames=f)
        if not bool(drop_reference.all()):
            if reference_features.batch_size == 0 or b % reference_features.batch_size:
                raise ValueError(f"reference features for {reference_features.batch_size} clips, batch {b}")
            state.reference = reference_features.tile(b // reference_features.batch_size).features
            state.reference_keep = None if not bool(drop_reference.any()) else ~reference_mask

        # 3. student CFG conditioning (Eq. 10 tokens, scale-MLP tokens or a timestep-embedding shift)
        self._condition_on_cfg(state, cfg_scales, b, f, device)

        # 4. one denoising-net forward over B·F frames
        timesteps = device_values(timesteps, b, device)  # (B,)
        sample = noisy.reshape(b * f, *noisy.shape[2:]).to(self.dtype)  # (B·F, C, h, w)
        try:
            eps = self.denoising_unet(
                sample, timesteps.repeat_interleave(f), tokens, cross_attention_kwargs={"fada": state}
            ).sample
        finally:
            self._time_shift.shift = None
        self.denoising_net_calls += 1
        self.nfe_counter += len(set(zip(drop_audio.tolist(), drop_reference.tolist(), strict=True)))
        return eps.reshape(b, f, *eps.shape[1:])  # (B, F, C, h, w)

    def denoise_multi_cfg(self, noisy, timesteps, audio_tokens, reference_features, cfg_scales=None):
        """(ε_a, ε_r, ε_b) for B clips from ONE forward of batch 3B (DESIGN §4, Eq. 9 inputs; NFE += 3)."""
        b = noisy.shape[0]
        device = noisy.device
        flags = torch.tensor([[False, False], [True, False], [True, True]])  # (audio, ref) drops, on the host
        drops = flags.repeat_interleave(b, dim=0)  # (3B, 2)
        timesteps = device_values(timesteps, b, device).repeat(3)  # (3B,)
        scales = None if cfg_scales is None else tuple(device_values(s, b, device).repeat(3) for s in cfg_scales)
        eps = self.denoise(
            noisy.repeat(3, 1, 1, 1, 1),
            timesteps,
            _tile(audio_tokens, b, "audio_tokens").repeat(3, 1, 1, 1),
            reference_features,
            drops[:, 0],
            drops[:, 1],
            scales,
        )
        return eps.chunk(3)

    def forward(
        self,
        noisy,
        timesteps,
        reference_latent,
        motion_latents,
        audio_features,
        drop_audio,
        drop_reference,
        cfg_scales=None,
    ):
        """Training forward: reference features + audio tokens + `denoise` (reference net skipped if all dropped).

        The drop flags are read on the host (`host_flags`): skipping the reference net costs no device sync.
        """
        drop_reference = host_flags(drop_reference, noisy.shape[0])
        reference = None if bool(drop_reference.all()) else self.reference_features(reference_latent, motion_latents)
        tokens = self.audio_tokens(audio_features)
        return self.denoise(noisy, timesteps, tokens, reference, drop_audio, drop_reference, cfg_scales)

    def _condition_on_cfg(self, state: FadaAttentionState, cfg_scales, b: int, f: int, device) -> None:
        if self.cfg_conditioning is None:
            if cfg_scales is not None:
                raise UsageError("cfg_scales were given to a model without CFG conditioning (a teacher); drop them.")
            return
        if cfg_scales is None:
            cfg_scales = (torch.ones(b, device=device), torch.ones(b, device=device))
        cfg_a, cfg_r = (device_values(s, b, device) for s in cfg_scales)  # (B,) each
        if self.config.cfg_conditioning == "time-embed":
            self._time_shift.shift = self.cfg_conditioning.time_embedding(cfg_a, cfg_r).repeat_interleave(f, dim=0)
        else:
            state.cfg_tokens = self.cfg_conditioning.tokens(cfg_a, cfg_r).to(self.dtype).repeat_interleave(f, dim=0)


# --- builders -------------------------------------------------------------------------------------


def build_unet(config: ModelConfig) -> UNet2DConditionModel:
    """A `UNet2DConditionModel` of the config's shape (SD1.5 defaults for everything else)."""
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=config.down_block_types,
        up_block_types=config.up_block_types,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
        cross_attention_dim=config.cross_attention_dim,
    )


def build_vae(config: ModelConfig) -> AutoencoderKL:
    """A fresh `AutoencoderKL` of the config's shape (random; load SD1.5 weights with `from_pretrained_sd`)."""
    levels = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_block_out_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_num_groups,
        sample_size=config.sample_size,
        scaling_factor=config.vae_scaling_factor,
    )


def build_cfg_conditioning(config: ModelConfig, denoising_unet: UNet2DConditionModel) -> CfgConditioning | None:
    """The student's CFG module for `config.cfg_conditioning` (None for 'none'), zero-initialised."""
    if config.cfg_conditioning == "none":
        return None
    layers = cross_attention_layers(denoising_unet)
    return CfgConditioning(
        mode=config.cfg_conditioning,
        n_tokens=config.cfg_tokens,
        token_dim=config.cross_attention_dim,
        query_dims=[a.to_q.in_features for a in layers],
        heads=[a.heads for a in layers],
        time_embed_dim=denoising_unet.time_embedding.linear_2.out_features,
    )


def freeze_reference_tail(unet: UNet2DConditionModel) -> None:
    """Freeze the reference-net layers that run after the input of its last self-attention.

    Only the hidden states entering the self-attentions are used, so these layers would never get a
    gradient: the last transformer block past its norm1 and its proj_out, any upsampler and up
    block after it, conv_norm_out and conv_out. (Execution order: down, mid, up blocks, output.)
    """
    last_up = max(i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None))
    block = unet.up_blocks[last_up]
    last = block.attentions[-1]
    tail = [last.transformer_blocks[-1], last.proj_out, block.upsamplers, *unet.up_blocks[last_up + 1 :]]
    for module in [*tail, unet.conv_norm_out, unet.conv_out]:
        if module is not None:
            module.requires_grad_(False)
    last.transformer_blocks[-1].norm1.requires_grad_(True)  # produces the recorded input


def _tile(x: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if x.shape[0] == 0 or b % x.shape[0]:
        raise ValueError(f"{name} has batch {x.shape[0]}, which does not divide the noisy batch {b}")
    return x if x.shape[0] == b else x.repeat(b // x.shape[0], *([1] * (x.ndim - 1)))


def _load_pretrained(cls, folder: Path):
    if not (folder / "config.json").is_file():
        raise InputFileError(
            f"{folder} has no config.json; `pretrained_sd` must be a diffusers-layout SD1.5 folder (unet/, vae/)."
        )
    try:
        return cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    except OSError as exc:
        raise InputFileError(
            f"cannot load {folder} ({exc}); it needs config.json + diffusion_pytorch_model.safetensors."
        ) from exc


def _check_shapes(loaded: dict, expected: dict, folder: Path, config: ModelConfig) -> None:
    for key, tensor in expected.items():
        if key not in loaded or loaded[key].shape != tensor.shape:
            got = tuple(loaded[key].shape) if key in loaded else "missing"
            raise InputFileError(
                f"{folder} does not fit preset {config.preset!r}: {key} is {got}, expected {tuple(tensor.shape)}; "
                "use the preset whose sizes match these weights (sd15 for Stable Diffusion 1.5)."
            )
