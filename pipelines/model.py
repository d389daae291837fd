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

Model families (docs/DESIGN.md §3c): `config.family == "hallo"` swaps the temporal layers and the
audio projection for Hallo's motion modules, audio modules, identity tokens and face locator
(`pipelines.hallo_modules.HalloParts`); the rest — checkpoints, samplers, distillation — is shared.
Whatever the network predicts (`config.prediction_type`), `denoise` returns ε (docs/DESIGN.md §4).
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
from pipelines.hallo_modules import FaceConditions, HalloAudioProjection, HalloParts
from pipelines.model_config import ModelConfig
from pipelines.schedulers import alpha_bar_at, eps_alphas_cumprod, eps_from_x0, v_to_eps


@dataclass(frozen=True)
class ReferenceFeatures:
    """Hidden states entering each self-attention of the reference net, for B clips.

    `features[layer]` is (B, (1+M)·L, C): the reference image and the M motion frames side by side.
    `latent` (B, C, h, w) is the reference latent itself, kept for a model that reads it directly
    (`ModelConfig.uses_reference_latent`: the residual skip, input concatenation); `features` may then
    be empty (every sample's reference attention dropped).
    """

    features: dict[str, torch.Tensor]
    batch_size: int
    latent: torch.Tensor | None = None
    hallo: object | None = None  # hallo family: the clips' `hallo_modules.HalloClip` (identity, face feature, masks)

    def tile(self, repeats: int) -> ReferenceFeatures:
        """The same features for `repeats`·B samples, laid out as `torch.cat([x] * repeats)`."""
        if repeats == 1:
            return self
        latent = None if self.latent is None else self.latent.repeat(repeats, 1, 1, 1)
        return ReferenceFeatures(
            {k: v.repeat(repeats, 1, 1) for k, v in self.features.items()},
            self.batch_size * repeats,
            latent,
            None if self.hallo is None else self.hallo.tile(repeats),
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
        hallo: HalloParts | None = None,
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
        self.hallo = hallo  # the hallo family's modules (None for fada's own)
        if hallo is None:
            attach_temporal_layers(denoising_unet, temporal_layers)
        else:
            hallo.attach(denoising_unet)
        # ᾱ for the v → ε conversion in `denoise` (float64, CPU; never cast with the weights)
        with torch.device("cpu"):  # also when the model is built on the meta device (`fada import hallo`)
            self.eps_alphas_cumprod = eps_alphas_cumprod(config)
        self._time_shift = _TimeEmbedShift()
        denoising_unet.time_embedding.register_forward_hook(self._time_shift)
        self._schedule: torch.Tensor | None = None  # ᾱ on the model's device (`_alphas_cumprod`)
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
        denoising_unet = build_unet(config, config.denoising_in_channels)
        reference_unet = build_unet(config)
        reference_unet.load_state_dict(_reference_view(denoising_unet.state_dict(), config))
        init_reference_inputs(denoising_unet, config)
        if config.family == "hallo":
            return cls._hallo_from_config(config, reference_unet, denoising_unet)
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
            time_embed_dim=denoising_unet.time_embedding.linear_2.out_features if config.audio_time_embedding else None,
        )
        cfg = build_cfg_conditioning(config, denoising_unet)
        vae = build_vae(config) if config.latent_codec == "vae" else None
        return cls(config, reference_unet, denoising_unet, temporal, audio_projection, cfg, vae)

    @classmethod
    def _hallo_from_config(cls, config: ModelConfig, reference_unet, denoising_unet) -> FadaModel:
        audio_projection = HalloAudioProjection(
            input_dim=config.audio_window_size * config.audio_feature_dim,
            hidden_dim=config.audio_hidden_dim,
            n_tokens=config.audio_tokens,
            dim=config.cross_attention_dim,
        )
        hallo = HalloParts.from_config(config, denoising_unet)
        cfg = build_cfg_conditioning(config, denoising_unet)
        return cls(config, reference_unet, denoising_unet, None, audio_projection, cfg, build_vae(config), hallo)

    @classmethod
    def from_pretrained_sd(cls, config: ModelConfig, sd_path: str | Path) -> FadaModel:
        """Both UNets (and the VAE of a latent config) from a diffusers-layout SD1.5 folder.

        `sd_path/unet` and `sd_path/vae` (safetensors); the new layers (temporal, audio projection,
        CFG) stay freshly initialised. Shapes that differ from `config` are an `InputFileError`.
        """
        model = cls.from_config(config)
        sd_path = Path(sd_path)
        unet_state = _load_pretrained(UNet2DConditionModel, sd_path / "unet").state_dict()
        _check_shapes(unet_state, model.reference_unet.state_dict(), sd_path / "unet", config)
        model.reference_unet.load_state_dict(unet_state)
        model.denoising_unet.load_state_dict(_widen_conv_in(unet_state, config))
        init_reference_inputs(model.denoising_unet, config)
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
        if config.family == "hallo":
            del parts["temporal_layers"]
            parts["audio_projection"] = HalloAudioProjection
            parts.update(HalloParts.COMPONENTS)
        loaded = {name: load_component(path, name, part) for name, part in parts.items()}
        if config.family == "hallo":
            loaded["hallo"] = HalloParts(*(loaded.pop(name) for name in HalloParts.COMPONENTS))
            loaded["temporal_layers"] = None
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
        if self.hallo is not None:
            parts.update(self.hallo.components())
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
        (self.temporal_layers if self.hallo is None else self.hallo.motion_modules).enable_gradient_checkpointing()

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

    def reference_features(
        self,
        reference_latent: torch.Tensor,
        motion_latents: torch.Tensor | None = None,
        face: FaceConditions | None = None,
    ):
        """Run the reference net ONCE on the reference and M motion latents → `ReferenceFeatures`.

        reference_latent (B, C, h, w); motion_latents (B, M, C, h, w), or None for a first clip
        (the reference repeated `config.motion_frames` times). The caller caches the result. The hallo
        family also needs the clips' `face` inputs: its reference net attends to the identity tokens.
        """
        b = reference_latent.shape[0]
        latent = reference_latent if self.config.uses_reference_latent else None
        clip = None if self.hallo is None else self.hallo.clip(face, b, self.dtype)
        context = None if clip is None else clip.identity  # (B, n, D)
        if motion_latents is None:  # the net sees each image alone: run it once and repeat its features
            features = self._run_reference_net(reference_latent[:, None], context)  # (B, L, C) per layer
            n_images = 1 + self.config.motion_frames
            return ReferenceFeatures({name: h.repeat(1, n_images, 1) for name, h in features.items()}, b, latent, clip)
        images = torch.cat([reference_latent[:, None], motion_latents], dim=1)  # (B, 1+M, C, h, w)
        return ReferenceFeatures(self._run_reference_net(images, context), b, latent, clip)

    def condition_reference(
        self, reference_latent, motion_latents, drop_reference, face: FaceConditions | None = None
    ) -> ReferenceFeatures | None:
        """The reference condition of a batch whose per-sample drops are ``drop_reference`` (B,) bool.

        The reference net runs unless every sample's reference is dropped; then a model that reads the
        reference latent itself still gets it (features empty), and any other model gets None. The hallo
        family always runs it: its masks and motion frames stay when the reference is dropped.
        """
        if self.hallo is not None or not bool(torch.as_tensor(drop_reference).all()):  # host flags: no sync
            return self.reference_features(reference_latent, motion_latents, face)
        if self.config.uses_reference_latent:
            return ReferenceFeatures({}, reference_latent.shape[0], reference_latent)
        return None

    def _run_reference_net(self, images: torch.Tensor, context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, n, C, h, w) clean latents → layer name → (B, n·L, C): the attn1 inputs of the n images side by side.

        ``context`` (B, T, D): what the reference net's cross-attention reads (hallo: identity tokens); None: zeros.
        """
        b, n_images = images.shape[:2]
        flat = images.reshape(b * n_images, *images.shape[2:]).to(self.dtype)  # (B·n, C, h, w)
        timesteps = torch.zeros(flat.shape[0], device=flat.device)  # a clean image: t = 0
        if context is None:
            # no text/audio for the reference
            context = flat.new_zeros(flat.shape[0], 1, self.config.cross_attention_dim)
        else:
            context = context.to(flat.dtype).repeat_interleave(n_images, dim=0)  # (B·n, T, D)
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
        native: bool = False,
    ) -> torch.Tensor:
        """ε prediction for noisy latents (B, F, C, h, w) at `timesteps` (B,) (float; a scalar broadcasts).

        A v-prediction network's v is converted to ε = √ᾱ·v + √(1−ᾱ)·z with ᾱ of `eps_alphas_cumprod`
        at index round(timestep) (clamped to 0…999); ``native=True`` returns the network's own output
        instead (the v-prediction DDIM sampler takes v: `schedulers.ddim_step_v`).

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
        if reference_features is None and self.hallo is not None:
            raise ValueError("the hallo family needs reference features (its masks and motion frames) in every call")
        reference_latent = self._reference_latent(reference_features, b)  # (B, C, h, w) or None
        if reference_features is None or not reference_features.features:
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
        if self.hallo is not None:  # hallo: audio tokens to the audio modules, identity tokens to the cross-attention
            if reference_features.batch_size == 0 or b % reference_features.batch_size:
                raise ValueError(f"reference features for {reference_features.batch_size} clips, batch {b}")
            tiled = reference_features.tile(b // reference_features.batch_size)
            tokens = self.hallo.prepare(state, tiled.hallo, tiled.features, self.config.motion_frames, tokens,
                                        reference_mask, f)  # fmt: skip
            state.reference_keep = None if not bool(drop_reference.any()) else ~reference_mask
            if bool(drop_reference.all()):
                state.reference = None
        elif not bool(drop_reference.all()):
            if reference_features.batch_size == 0 or b % reference_features.batch_size:
                raise ValueError(f"reference features for {reference_features.batch_size} clips, batch {b}")
            state.reference = reference_features.tile(b // reference_features.batch_size).features
            state.reference_keep = None if not bool(drop_reference.any()) else ~reference_mask

        # 3. student CFG conditioning (Eq. 10 tokens, scale-MLP tokens or a timestep-embedding shift); the
        # audio's own timestep-embedding shift (`audio_time_embedding`), per frame, added to it
        self._condition_on_cfg(state, cfg_scales, b, f, device)
        if getattr(self.audio_projection, "time_projection", None) is not None:  # fada family: `audio_time_embedding`
            audio_shift = self.audio_projection.time_shift(tokens)  # (B·F, D_time)
            self._time_shift.shift = (
                audio_shift if self._time_shift.shift is None else self._time_shift.shift + audio_shift
            )

        # 4. one denoising-net forward over B·F frames (the reference latent on extra input channels)
        timesteps = device_values(timesteps, b, device)  # (B,)
        sample = noisy.reshape(b * f, *noisy.shape[2:]).to(self.dtype)  # (B·F, C, h, w)
        if self.config.reference_concat:
            shown = torch.where(reference_mask[:, None, None, None], 0.0, reference_latent).to(self.dtype)
            sample = torch.cat([sample, shown.repeat_interleave(f, dim=0)], dim=1)  # (B·F, 2C, h, w)
        try:
            out = self.denoising_unet(
                sample, timesteps.repeat_interleave(f), tokens, cross_attention_kwargs={"fada": state}
            ).sample
        finally:
            self._time_shift.shift = None
            if self.hallo is not None:
                self.hallo.face_shift.shift = None
        self.denoising_net_calls += 1
        self.nfe_counter += len(set(zip(drop_audio.tolist(), drop_reference.tolist(), strict=True)))
        out = out.reshape(b, f, *out.shape[1:])  # (B, F, C, h, w)
        if self.config.prediction_type == "v_prediction" and not native:  # v → ε (docs/DESIGN.md §4)
            index = timesteps.round().long().clamp(0, len(self.eps_alphas_cumprod) - 1).cpu()
            return v_to_eps(out, noisy.to(out.dtype), self.eps_alphas_cumprod[index])
        if self.config.prediction_type != "reference_residual":
            return out  # ε (v with ``native``)
        # 5. reference_residual: x̂0 = reference + output, in every branch (the skip is never dropped)
        x0 = reference_latent[:, None].to(torch.float32) + out.float()  # (B, F, C, h, w)
        alpha_bar = alpha_bar_at(self._alphas_cumprod(device), timesteps)  # (B,)
        return eps_from_x0(noisy.float(), x0, alpha_bar).to(out.dtype)

    def _alphas_cumprod(self, device) -> torch.Tensor:
        """ᾱ of the model's ε schedule (`eps_alphas_cumprod`), float32 on ``device``, kept per device."""
        if self._schedule is None or self._schedule.device != torch.device(device):
            self._schedule = self.eps_alphas_cumprod.to(device, torch.float32)
        return self._schedule

    def _reference_latent(self, reference_features: ReferenceFeatures | None, b: int) -> torch.Tensor | None:
        if not self.config.uses_reference_latent:
            return None
        if reference_features is None or reference_features.latent is None:
            raise ValueError(
                f"prediction_type={self.config.prediction_type!r}, reference_concat={self.config.reference_concat}: "
                "this model reads the reference latent; pass `condition_reference(...)`'s features, not None"
            )
        return _tile(reference_features.latent, b, "reference latent")

    def denoise_multi_cfg(self, noisy, timesteps, audio_tokens, reference_features, cfg_scales=None, native=False):
        """(ε_a, ε_r, ε_b) for B clips from ONE forward of batch 3B (DESIGN §4, Eq. 9 inputs; NFE += 3).

        ``native=True``: the network's own outputs (v for a v-prediction model), see `denoise`."""
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
            native,
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
        face: FaceConditions | None = None,
    ):
        """Training forward: reference features + audio tokens + `denoise` (reference net skipped if all dropped;
        the hallo family always runs it: its masks and motion frames stay when the reference is dropped).

        The drop flags are read on the host (`host_flags`): skipping the reference net costs no device sync.
        """
        drop_reference = host_flags(drop_reference, noisy.shape[0])
        reference = self.condition_reference(reference_latent, motion_latents, drop_reference, face)
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


def build_unet(config: ModelConfig, in_channels: int | None = None) -> UNet2DConditionModel:
    """A `UNet2DConditionModel` of the config's shape (SD1.5 defaults for everything else).

    ``in_channels``: None for the latent channels (the reference net); the denoising net passes
    `ModelConfig.denoising_in_channels`.
    """
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels if in_channels is None else in_channels,
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


def init_reference_inputs(unet: UNet2DConditionModel, config: ModelConfig) -> None:
    """Start the reference-latent inputs at zero, so they change nothing until trained.

    ``reference_concat``: conv_in's weights on the concatenated reference channels;
    ``reference_residual``: conv_out, so the untrained net predicts x̂0 = the reference (the portrait).
    """
    with torch.no_grad():
        if config.reference_concat:
            unet.conv_in.weight[:, config.latent_channels :].zero_()
        if config.prediction_type == "reference_residual":
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.zero_()


def _reference_view(state: dict, config: ModelConfig) -> dict:
    """The denoising net's weights as the reference net takes them: conv_in without the concatenated channels."""
    if not config.reference_concat:
        return state
    return state | {"conv_in.weight": state["conv_in.weight"][:, : config.latent_channels]}


def _widen_conv_in(state: dict, config: ModelConfig) -> dict:
    """A plain UNet's weights for the denoising net: conv_in gains (zero) reference channels when concatenated."""
    if not config.reference_concat:
        return state
    weight = state["conv_in.weight"]  # (out, C, 3, 3)
    return state | {"conv_in.weight": torch.cat([weight, torch.zeros_like(weight)], dim=1)}


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
