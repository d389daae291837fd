"""The `hallo` model family's own modules (docs/DESIGN.md §3c), attached to fada's plain UNets.

Hallo (Xu et al. 2024, fudan-generative-vision/hallo; Hallo2 keeps the same model files) is a dual
UNet like fada's. Its denoising UNet is an SD1.5 UNet whose every spatial transformer is followed by
an **audio module** and an AnimateDiff **motion module**; its cross-attention reads 4 **identity
tokens** projected from a 512-d face embedding; a **face locator** adds a face-region feature after
`conv_in`. Here each piece is a diffusers `ModelMixin` component, and the UNet stays a plain,
loadable `UNet2DConditionModel`: the pieces run from forward hooks (never a replaced `forward`),
reading the per-call data from `FadaAttentionState.hallo` (a `HalloState`).

Parameter names follow Hallo's, so `pipelines.hallo.hallo_key_map` only moves prefixes. What Hallo's
sampler runs, and so what runs here (read from `hallo/models/unet_3d_blocks.py`; `scripts/inference.py`
builds the denoising UNet with `from_config` and never calls `.eval()`, with gradient checkpointing
on, so the blocks take their `self.training and self.gradient_checkpointing` branch):

- after each spatial transformer: the audio module, then the motion module over [motion frames,
  F frames] — the motion frames being the reference net's hidden states entering the matching
  self-attention (the last M of the 1 + M images it ran on), dropped again after the module;
- the motion modules of `DownBlock3D`/`UpBlock3D` (the 8×8 level, after plain resnets) are in the
  checkpoint but that branch never runs them: they are carried (`HalloMotionModules.resnet_layers`)
  and not run;
- reference attention reads the reference image's states only (`bank[:, 0]`), not the motion frames'.

Audio module (`AudioTemporalBasicTransformerBlock` with all blocks enabled, Hallo's only config):
self-attention, then three cross-attentions to the audio tokens weighted per pixel by the full
(background), face and lip masks of the block's resolution, each through a zero-initialised 1×1
conv, summed (× the pose/face/lip weights, 1 by default), then the feed-forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_2d import Transformer2DModel, Transformer2DModelOutput

from pipelines.attention import attend

MASK_KINDS = ("full", "face", "lip")  # Hallo's pose (background), face and lip masks, in its attn2_0/1/2 order


@dataclass
class HalloState:
    """Per-call data of the hallo hooks (`FadaAttentionState.hallo`). S samples, F frames, N = S·F.

    ``masks[side]``: (N, 3, side²) full/face/lip weights at a UNet resolution; ``motion[layer]``:
    (S, M·L, C) the reference net's states of the M motion frames entering the self-attention
    ``layer``; ``audio_tokens``: (N, T, D).
    """

    audio_tokens: torch.Tensor
    masks: dict[int, torch.Tensor]
    motion: dict[str, torch.Tensor] = field(default_factory=dict)
    num_motion: int = 0  # M
    mask_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # Hallo's pose/face/lip weights


def zero_(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        torch.nn.init.zeros_(p)
    return module


# --- per-clip condition modules ------------------------------------------------------------------


class FaceLocator(ModelMixin, ConfigMixin):
    """Face-region mask (N, 3, H, W) in [0, 1] → a feature (N, C0, H/8, W/8) added after `conv_in`.

    Hallo's `FaceLocator`: a 3×3 conv, then per level a 3×3 conv and a stride-2 3×3 conv (SiLU after
    each), then a zero-initialised 3×3 conv to the UNet's first width.
    """

    @register_to_config
    def __init__(
        self, embedding_channels: int = 320, conditioning_channels: int = 3, block_out_channels=(16, 32, 64, 128)
    ):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = torch.nn.Conv2d(conditioning_channels, widths[0], 3, padding=1)
        self.blocks = torch.nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            self.blocks.append(torch.nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(torch.nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = zero_(torch.nn.Conv2d(widths[-1], embedding_channels, 3, padding=1))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(mask))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class IdentityProjection(ModelMixin, ConfigMixin):
    """Face embedding (B, 512) → identity tokens (B, n, D) (Hallo's `ImageProjModel`: linear, LayerNorm)."""

    @register_to_config
    def __init__(self, embedding_dim: int = 512, n_tokens: int = 4, dim: int = 768):
        super().__init__()
        self.proj = torch.nn.Linear(embedding_dim, n_tokens * dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(embedding).reshape(-1, self.config.n_tokens, self.config.dim)  # (B, n, D)
        return self.norm(tokens)


class HalloAudioProjection(ModelMixin, ConfigMixin):
    """Audio windows (B, F, W, D_feat) → (B, F, N, D) tokens (Hallo's `AudioProjModel`: 3 linears, ReLU, LayerNorm).

    D_feat is every stacked layer's features of a frame (12 × 768 for wav2vec2-base). The null audio
    of Hallo's training and CFG is zeros after the projection (`null_tokens`, not learned).
    """

    @register_to_config
    def __init__(self, input_dim: int = 5 * 12 * 768, hidden_dim: int = 512, n_tokens: int = 32, dim: int = 768):
        super().__init__()
        self.proj1 = torch.nn.Linear(input_dim, hidden_dim)
        self.proj2 = torch.nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = torch.nn.Linear(hidden_dim, n_tokens * dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.register_buffer("null_tokens", torch.zeros(n_tokens, dim), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, f = features.shape[:2]
        x = torch.relu(self.proj1(features.reshape(b * f, -1)))  # (B·F, W·D_feat) → (B·F, hidden)
        x = torch.relu(self.proj2(x))
        tokens = self.proj3(x).reshape(b * f, self.config.n_tokens, self.config.dim)
        return self.norm(tokens).reshape(b, f, self.config.n_tokens, self.config.dim)  # (B, F, N, D)


# --- audio modules -------------------------------------------------------------------------------


class MaskedAudioBlock(torch.nn.Module):
    """Self-attention, the three mask-weighted audio cross-attentions behind zero convs, feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        for i in range(len(MASK_KINDS)):
            attention = Attention(
                query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=head_dim
            )
            setattr(self, f"attn2_{i}", attention)
        self.zero_conv_full = zero_(torch.nn.Conv2d(dim, dim, 1))
        self.zero_conv_face = zero_(torch.nn.Conv2d(dim, dim, 1))
        self.zero_conv_lip = zero_(torch.nn.Conv2d(dim, dim, 1))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = torch.nn.LayerNorm(dim)

    def forward(self, x, audio_tokens, masks, side: int, weights=(1.0, 1.0, 1.0)):
        """x (N, L, dim), audio_tokens (N, T, D), masks (N, 3, L) → (N, L, dim)."""
        h = self.norm1(x)
        x = attend(self.attn1, h, h) + x
        h = self.norm2(x)
        convs = (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip)
        for i, (conv, weight) in enumerate(zip(convs, weights, strict=True)):
            out = attend(getattr(self, f"attn2_{i}"), h, audio_tokens) * masks[:, i, :, None]  # (N, L, dim)
            n, length, c = out.shape
            out = conv(out.reshape(n, side, side, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(n, length, c)
            x = x + weight * out
        return self.ff(self.norm3(x)) + x


class AudioModule(torch.nn.Module):
    """One audio module: GroupNorm, 1×1 conv in, `MaskedAudioBlock`, 1×1 conv out, residual (N, C, h, w)."""

    def __init__(self, channels: int, heads: int, head_dim: int, cross_attention_dim: int, norm_num_groups: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = torch.nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = torch.nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = torch.nn.ModuleList([MaskedAudioBlock(inner, heads, head_dim, cross_attention_dim)])
        self.proj_out = torch.nn.Conv2d(inner, channels, 1)

    def forward(self, x, audio_tokens, masks, weights=(1.0, 1.0, 1.0)):
        n, c, h, w = x.shape
        hidden = self.proj_in(self.norm(x))
        inner = hidden.shape[1]
        hidden = hidden.permute(0, 2, 3, 1).reshape(n, h * w, inner)
        hidden = self.transformer_blocks[0](hidden, audio_tokens, masks, h, weights)
        hidden = hidden.reshape(n, h, w, inner).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(hidden) + x


class HalloAudioModules(ModelMixin, ConfigMixin):
    """One `AudioModule` per spatial transformer of the denoising UNet, in module order."""

    @register_to_config
    def __init__(self, channels: list[int], inner_channels: list[int], heads: list[int], cross_attention_dim: int = 768,
                 norm_num_groups: int = 32):  # fmt: skip
        super().__init__()
        self.layers = torch.nn.ModuleList(
            AudioModule(c, h, inner // h, cross_attention_dim, norm_num_groups)
            for c, inner, h in zip(channels, inner_channels, heads, strict=True)
        )


# --- motion modules (AnimateDiff's VanillaTemporalModule) ------------------------------------------


class TemporalSelfAttention(Attention):
    """AnimateDiff's temporal self-attention: sinusoidal frame positions added to the input, then attention.

    A diffusers `Attention` (to_q/to_k/to_v/to_out) with the position table as the buffer `pos_encoder.pe`.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, max_len: int = 32):
        super().__init__(query_dim=dim, heads=heads, dim_head=head_dim)
        self.pos_encoder = torch.nn.Module()
        self.pos_encoder.register_buffer("pe", sinusoidal_table(max_len, dim))

    def temporal(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, frames, dim) → (N, frames, dim): positions added, then self-attention across frames."""
        x = x + self.pos_encoder.pe[:, : x.shape[1]].to(x.dtype)
        return attend(self, x, x)


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim): sin on even, cos on odd channels (AnimateDiff's `PositionalEncoding`)."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_len, dim)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


class TemporalTransformerBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, max_len: int, n_attentions: int = 2):
        super().__init__()
        self.attention_blocks = torch.nn.ModuleList(
            TemporalSelfAttention(dim, heads, head_dim, max_len) for _ in range(n_attentions)
        )
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(dim) for _ in range(n_attentions))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = torch.nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms, strict=True):
            x = attention.temporal(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(torch.nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, norm_num_groups: int = 32):
        super().__init__()
        head_dim = channels // heads
        inner = heads * head_dim
        self.norm = torch.nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = torch.nn.Linear(channels, inner)
        self.transformer_blocks = torch.nn.ModuleList([TemporalTransformerBlock(inner, heads, head_dim, max_len)])
        self.proj_out = zero_(torch.nn.Linear(inner, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, C, frames, h, w) → the same, attention across frames at every pixel, residual."""
        s, c, frames, h, w = x.shape
        flat = x.permute(0, 2, 1, 3, 4).reshape(s * frames, c, h, w)  # (S·frames, C, h, w)
        hidden = self.proj_in(self.norm(flat).permute(0, 2, 3, 1).reshape(s * frames, h * w, c))
        inner = hidden.shape[-1]
        # (S·frames, L, inner) → (S·L, frames, inner)
        hidden = hidden.reshape(s, frames, h * w, inner).transpose(1, 2).reshape(s * h * w, frames, inner)
        for block in self.transformer_blocks:
            hidden = block(hidden)
        hidden = hidden.reshape(s, h * w, frames, inner).transpose(1, 2).reshape(s * frames, h * w, inner)
        out = self.proj_out(hidden).reshape(s * frames, h, w, c).permute(0, 3, 1, 2) + flat
        return out.reshape(s, frames, c, h, w).permute(0, 2, 1, 3, 4)


class MotionModule(torch.nn.Module):
    """AnimateDiff's `VanillaTemporalModule` (1 block of 2 temporal self-attentions), proj_out zero-initialised."""

    def __init__(self, channels: int, heads: int = 8, max_len: int = 32, norm_num_groups: int = 32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len, norm_num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)


class HalloMotionModules(ModelMixin, ConfigMixin):
    """Motion modules: `layers[i]` after the i-th spatial transformer (run); `resnet_layers` carried only.

    `resnet_layers` are the checkpoint's motion modules of the blocks without attention (Hallo's
    `DownBlock3D`/`UpBlock3D`), which Hallo's sampler never runs (module docstring); kept so that an
    imported checkpoint is complete and re-exportable.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, channels: list[int], resnet_channels: list[int], heads: int = 8, max_len: int = 32,
                 norm_num_groups: int = 32):  # fmt: skip
        super().__init__()
        self.gradient_checkpointing = False
        self.layers = torch.nn.ModuleList(MotionModule(c, heads, max_len, norm_num_groups) for c in channels)
        self.resnet_layers = torch.nn.ModuleList(
            MotionModule(c, heads, max_len, norm_num_groups) for c in resnet_channels
        )


# --- shapes from the UNet, and the hooks -------------------------------------------------------------


def spatial_transformers(unet) -> list[tuple[str, Transformer2DModel]]:
    """(name, module) of the UNet's spatial transformers in module order (down, mid, up)."""
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, Transformer2DModel)]


def audio_module_shapes(unet) -> tuple[list[int], list[int], list[int]]:
    """(channels, inner widths, heads) of Hallo's audio module after each spatial transformer (module order).

    Hallo builds each with `in_channels // heads` as head width, where `in_channels` is a down block's
    input width for its first layer (then its output width), the mid block's width, and an up block's
    `in_channels` argument (its skip width) for every layer — so the inner width can differ from the
    channels.
    """
    heads = unet.config.attention_head_dim  # diffusers' misnamed field: the number of heads (SD1.5: 8)
    widths = list(unet.config.block_out_channels)
    levels = len(widths)
    per_level = [heads if isinstance(heads, int) else heads[i] for i in range(levels)]
    channels, inner, n_heads = [], [], []
    for name, module in spatial_transformers(unet):
        parts = name.split(".")
        if parts[0] == "down_blocks":
            i, j = int(parts[1]), int(parts[3])
            level, block_in = i, ((widths[i - 1] if i > 0 else widths[0]) if j == 0 else widths[i])
        elif parts[0] == "mid_block":
            level, block_in = levels - 1, widths[-1]
        else:
            i = int(parts[1])
            level, block_in = levels - 1 - i, list(reversed(widths))[min(i + 1, levels - 1)]
        channels.append(module.in_channels)
        inner.append(block_in // per_level[level] * per_level[level])
        n_heads.append(per_level[level])
    return channels, inner, n_heads


def resnet_motion_channels(unet) -> list[int]:
    """Widths of the motion modules Hallo keeps after the resnets of its blocks without attention."""
    layers = unet.config.layers_per_block
    widths = list(unet.config.block_out_channels)
    out = [
        widths[i] for i, b in enumerate(unet.down_blocks) if not getattr(b, "attentions", None) for _ in range(layers)
    ]
    out += [
        list(reversed(widths))[i]
        for i, b in enumerate(unet.up_blocks)
        if not getattr(b, "attentions", None)
        for _ in range(layers + 1)
    ]
    return out


class HalloBlockHook:
    """Forward hook of a spatial transformer: its audio module, then its motion module (module docstring)."""

    def __init__(self, attn1_name: str, audio: AudioModule, motion: MotionModule, owner: HalloMotionModules):
        self.attn1_name = attn1_name  # the self-attention whose reference-net states are the motion frames
        self.audio = audio
        self.motion = motion
        self.owner = owner  # its `gradient_checkpointing` flag

    def __call__(self, module, args, kwargs, output):
        fada = (kwargs.get("cross_attention_kwargs") or {}).get("fada")
        if fada is None or fada.hallo is None:
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample  # (S·F, C, h, w)
        if self.owner.gradient_checkpointing and torch.is_grad_enabled():
            sample = torch.utils.checkpoint.checkpoint(self._run, sample, fada, use_reentrant=False)
        else:
            sample = self._run(sample, fada)
        return (sample, *output[1:]) if isinstance(output, tuple) else Transformer2DModelOutput(sample=sample)

    def _run(self, sample: torch.Tensor, fada) -> torch.Tensor:
        state: HalloState = fada.hallo
        n, c, h, w = sample.shape
        frames = fada.num_frames
        masks = state.masks[w].to(sample.dtype)
        sample = self.audio(sample, state.audio_tokens.to(sample.dtype), masks, state.mask_weights)
        x = sample.reshape(n // frames, frames, c, h, w).transpose(1, 2)  # (S, C, F, h, w)
        motion = state.motion.get(self.attn1_name)
        m = 0
        if motion is not None and state.num_motion > 0:
            m = state.num_motion
            motion = motion.reshape(x.shape[0], m, h, w, c).permute(0, 4, 1, 2, 3).to(x.dtype)  # (S, C, M, h, w)
            x = torch.cat([motion, x], dim=2)
        x = self.motion(x)[:, :, m:]  # (S, C, F, h, w)
        return x.transpose(1, 2).reshape(n, c, h, w)


class FaceLocatorShift:
    """Forward hook of `conv_in`: adds the face-locator feature set for the current `denoise` call."""

    def __init__(self):
        self.shift: torch.Tensor | None = None  # (S·F, C0, h, w) during a call, else None

    def __call__(self, module, args, output):
        return output if self.shift is None else output + self.shift.to(output.dtype)


def attach_hallo_modules(unet, audio: HalloAudioModules, motion: HalloMotionModules) -> FaceLocatorShift:
    """Install the audio + motion hook on each spatial transformer and the face-locator hook on `conv_in`."""
    spatial = spatial_transformers(unet)
    if not (len(spatial) == len(audio.layers) == len(motion.layers)):
        raise ValueError(
            f"{len(audio.layers)} audio / {len(motion.layers)} motion modules for {len(spatial)} transformers"
        )
    for (name, module), audio_layer, motion_layer in zip(spatial, audio.layers, motion.layers, strict=True):
        hook = HalloBlockHook(f"{name}.transformer_blocks.0.attn1", audio_layer, motion_layer, motion)
        module.register_forward_hook(hook, with_kwargs=True)
    shift = FaceLocatorShift()
    unet.conv_in.register_forward_hook(shift)
    return shift


# --- the family's wiring into `FadaModel` ----------------------------------------------------------------


@dataclass(frozen=True)
class FaceConditions:
    """The hallo family's per-clip face inputs for B clips (`pipelines.hallo_inputs` makes them).

    ``embedding``: (B, 512) face embedding (zeros = the null identity); ``region``: (B, 3, H, W) face
    region in [0, 1] at the image size (the face locator's input); ``masks[side]``: (B, 3, side²)
    full/face/lip weights at each of the four UNet resolutions.
    """

    embedding: torch.Tensor
    region: torch.Tensor
    masks: dict[int, torch.Tensor]

    def to(self, device, dtype=None) -> FaceConditions:
        return FaceConditions(
            self.embedding.to(device, dtype),
            self.region.to(device, dtype),
            {side: m.to(device, dtype) for side, m in self.masks.items()},
        )


@dataclass(frozen=True)
class HalloClip:
    """What a clip's face inputs become, once per clip beside the reference features (B clips)."""

    identity: torch.Tensor  # (B, n, D) identity tokens
    null_identity: torch.Tensor  # (n, D) tokens of the zero embedding (Hallo's unconditional identity)
    face_feature: torch.Tensor  # (B, C0, h, w) face-locator output
    masks: dict[int, torch.Tensor]  # side → (B, 3, side²)

    def tile(self, repeats: int) -> HalloClip:
        return HalloClip(
            self.identity.repeat(repeats, 1, 1),
            self.null_identity,
            self.face_feature.repeat(repeats, 1, 1, 1),
            {side: m.repeat(repeats, 1, 1) for side, m in self.masks.items()},
        )


class HalloParts(torch.nn.Module):
    """The family's components and hooks on a `FadaModel`'s denoising net (module docstring)."""

    COMPONENTS = {  # checkpoint sub-folder → class
        "face_locator": FaceLocator,
        "identity_projection": IdentityProjection,
        "audio_modules": HalloAudioModules,
        "motion_modules": HalloMotionModules,
    }

    def __init__(self, face_locator, identity_projection, audio_modules, motion_modules):
        super().__init__()
        self.face_locator = face_locator
        self.identity_projection = identity_projection
        self.audio_modules = audio_modules
        self.motion_modules = motion_modules
        self.face_shift: FaceLocatorShift | None = None

    @classmethod
    def from_config(cls, config, unet) -> HalloParts:
        channels, inner, heads = audio_module_shapes(unet)
        return cls(
            FaceLocator(config.block_out_channels[0], 3, config.face_locator_channels),
            IdentityProjection(config.identity_embedding_dim, config.identity_tokens, config.cross_attention_dim),
            HalloAudioModules(channels, inner, heads, config.cross_attention_dim, config.norm_num_groups),
            HalloMotionModules(
                [m.in_channels for _, m in spatial_transformers(unet)],
                resnet_motion_channels(unet),
                config.temporal_heads,
                config.temporal_max_frames,
            ),
        )

    def attach(self, unet) -> None:
        self.face_shift = attach_hallo_modules(unet, self.audio_modules, self.motion_modules)

    def components(self) -> dict:
        return {name: getattr(self, name) for name in self.COMPONENTS}

    def clip(self, face: FaceConditions, batch: int, dtype) -> HalloClip:
        """Identity tokens, the face-locator feature and the masks of B clips' face inputs."""
        if face is None:
            raise ValueError(
                "the hallo family needs the clip's face inputs (FaceConditions); see pipelines.hallo_inputs"
            )
        if face.embedding.shape[0] != batch:
            raise ValueError(f"face inputs for {face.embedding.shape[0]} clips, reference for {batch}")
        identity = self.identity_projection(face.embedding.to(dtype))  # (B, n, D)
        null = self.identity_projection(torch.zeros_like(face.embedding[:1]).to(dtype))[0]  # (n, D)
        feature = self.face_locator(face.region.to(dtype))  # (B, C0, h, w)
        return HalloClip(identity, null, feature, {side: m.to(dtype) for side, m in face.masks.items()})

    def prepare(self, state, clip: HalloClip, features: dict, num_motion: int, audio_tokens, drop_reference, f: int):
        """Fill ``state`` for one denoising-net call of B = len(drop_reference) samples; return the identity
        context (B·F, n, D).

        A dropped reference is Hallo's unconditional branch: no reference attention, the null identity
        and no face-locator feature; the motion frames and masks stay, as in Hallo's sampler.
        """
        b = drop_reference.shape[0]
        drop = drop_reference[:, None, None]
        identity = torch.where(drop, clip.null_identity.to(clip.identity.dtype), clip.identity)  # (B, n, D)
        feature = clip.face_feature * (~drop_reference).to(clip.face_feature.dtype)[:, None, None, None]
        self.face_shift.shift = feature.repeat_interleave(f, dim=0)  # (B·F, C0, h, w)
        length = {name: h.shape[1] // (1 + num_motion) for name, h in features.items()}
        state.reference = {name: h[:, : length[name]] for name, h in features.items()}  # the reference image only
        state.hallo = HalloState(
            audio_tokens=audio_tokens,
            masks={side: m.repeat_interleave(f, dim=0) for side, m in clip.masks.items()},  # (B·F, 3, side²)
            motion={name: h[:, length[name] :] for name, h in features.items()},
            num_motion=num_motion,
        )
        if b != clip.identity.shape[0]:
            raise ValueError(f"hallo clip inputs for {clip.identity.shape[0]} samples, batch {b}")
        return identity.repeat_interleave(f, dim=0)  # (B·F, n, D)
