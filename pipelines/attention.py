"""Attention processors and hooks that turn two SD UNets into FADA's dual-UNet (DESIGN §3).

Nothing here replaces a module's `forward`. Per-call data travels the way diffusers intends:
`FadaModel` passes `cross_attention_kwargs={"fada": FadaAttentionState(...)}` to the UNet, and
diffusers hands that state to every attention processor (set with `unet.set_attn_processor`) and,
through `register_forward_hook(..., with_kwargs=True)`, to the temporal layers that follow each
spatial transformer. Without a state (a plain `unet(...)` call) every piece acts as a plain SD UNet.

- reference net, attn1: `ReferenceRecorderProcessor` keeps the hidden states entering each
  self-attention (the reference features) and then attends as usual;
- denoising net, attn1: `ReferenceAttnProcessor` — keys/values are [own states, reference features
  of the matching layer], the reference part projected once per clip and shared by its F frames; a
  sample whose reference is dropped has the reference part masked out;
- denoising net, attn2: `AudioAttnProcessor` — cross-attention to the per-frame audio tokens
  (frames folded into the batch), then, for a student, the CFG layer: one more cross-attention to
  the CFG embedding tokens (Eq. 10) whose zero-initialised output projection makes a fresh student
  equal its teacher;
- `TemporalLayers`: one zero-initialised `TransformerTemporalModel` after every spatial
  transformer, attending across the F frames of each clip.

Gradient checkpointing (`FadaModel.enable_gradient_checkpointing`) re-runs the spatial transformer
blocks and the temporal layers in the backward pass with the same `fada` state: the reference net's
recorder keeps its first recording, and every other processor only reads the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_2d import Transformer2DModel, Transformer2DModelOutput
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from pipelines import fada_math


@dataclass
class FadaAttentionState:
    """Per-call data read by the processors and temporal hooks (`cross_attention_kwargs["fada"]`).

    Batches: S = samples (clips) in the call, S·F = frames folded into the batch.
    """

    num_frames: int  # F; 1 for the reference net (no temporal mixing there)
    record: dict[str, torch.Tensor] | None = None  # reference net: layer name → attn1 input (S·(1+M), L, C)
    reference: dict[str, torch.Tensor] | None = None  # denoising net: layer name → features (S, (1+M)·L, C)
    reference_keep: torch.Tensor | None = None  # (S,) bool, False = reference dropped; None = kept for all
    cfg_tokens: torch.Tensor | None = None  # (S·F, n_tokens, D_cross) CFG embedding tokens (student)
    hallo: object | None = None  # hallo family: `hallo_modules.HalloState` (audio tokens, masks, motion frames)


def attend(attn: Attention, queries: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None):
    """Scaled dot-product attention with `attn`'s projections (AttnProcessor2_0's math, 3-D inputs).

    queries (N, Lq, Cq), context (N, Lk, Ck), mask None or bool (N, 1, 1, Lk) → (N, Lq, Cq).
    """
    return attend_projected(attn, attn.to_q(queries), attn.to_k(context), attn.to_v(context), mask)


def attend_projected(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    """`attend` from projected queries (N, Lq, inner), keys and values (N, Lk, inner) → (N, Lq, Cq)."""
    n = q.shape[0]
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (x.view(n, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))  # (N, heads, L, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(n, -1, attn.heads * head_dim).to(q.dtype)  # (N, Lq, inner)
    return attn.to_out[1](attn.to_out[0](out))


class FadaAttnProcessor:
    """Plain attention (self or cross) that accepts the `fada` state; the base of the others."""

    def __init__(self, name: str):
        self.name = name  # e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, fada=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return attend(attn, hidden_states, context)


class ReferenceRecorderProcessor(FadaAttnProcessor):
    """Reference net attn1: records the hidden states entering the self-attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, fada=None):
        if fada is not None and fada.record is not None:
            # first write wins: gradient checkpointing re-runs this block in the backward pass, and the
            # recomputed states must not replace (or add to) the features the denoising net consumed
            fada.record.setdefault(self.name, hidden_states)  # (S·(1+M), L, C)
        return attend(attn, hidden_states, hidden_states)


class ReferenceAttnProcessor(FadaAttnProcessor):
    """Denoising net attn1: self-attention over [own states, reference features] (reference attention)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, fada=None):
        if fada is None or fada.reference is None:  # no reference path for any sample
            return attend(attn, hidden_states, hidden_states)
        frames = fada.num_frames
        reference = fada.reference[self.name]  # (S, Lr, C)
        n, length, _ = hidden_states.shape  # n = S·F
        # the reference keys and values are projected once per clip and shared by its F frames: F× less
        # projection work, and training saves the (S, Lr, C) input instead of F copies of it
        k_ref = attn.to_k(reference).repeat_interleave(frames, dim=0)  # (S·F, Lr, inner)
        v_ref = attn.to_v(reference).repeat_interleave(frames, dim=0)
        k = torch.cat([attn.to_k(hidden_states), k_ref], dim=1)  # (S·F, L+Lr, inner)
        v = torch.cat([attn.to_v(hidden_states), v_ref], dim=1)
        mask = None
        if fada.reference_keep is not None:
            keep = fada.reference_keep.repeat_interleave(frames)[:, None]  # (S·F, 1)
            own = torch.ones(n, length, dtype=torch.bool, device=keep.device)
            mask = torch.cat([own, keep.expand(n, reference.shape[1])], dim=1)[:, None, None, :]  # (S·F,1,1,L+Lr)
        return attend_projected(attn, attn.to_q(hidden_states), k, v, mask)


class AudioAttnProcessor(FadaAttnProcessor):
    """Denoising net attn2: audio cross-attention, then (student) the CFG layer (Eq. 10).

    `cfg_attention` is an `Attention` owned by the student's `CfgConditioning` component (so the UNet
    stays a plain, loadable `UNet2DConditionModel`); its query is the audio attention's input plus its
    output, i.e. the CFG layer sits after the audio attention.
    """

    def __init__(self, name: str, cfg_attention: Attention | None = None):
        super().__init__(name)
        self.cfg_attention = cfg_attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, fada=None):
        out = attend(attn, hidden_states, encoder_hidden_states)  # (S·F, L, C)
        if self.cfg_attention is not None and fada is not None and fada.cfg_tokens is not None:
            out = out + attend(self.cfg_attention, hidden_states + out, fada.cfg_tokens)
        return out


def attention_names(unet, kind: str) -> list[str]:
    """Names (without '.processor') of the UNet's `attn1` or `attn2` layers, in module order."""
    return [k.removesuffix(".processor") for k in unet.attn_processors if k.endswith(f"{kind}.processor")]


def install_reference_recorder(unet) -> None:
    """Make `unet` a reference net: attn1 records its input, attn2 is plain."""
    unet.set_attn_processor(
        {
            key: (ReferenceRecorderProcessor if key.endswith("attn1.processor") else FadaAttnProcessor)(
                key.removesuffix(".processor")
            )
            for key in unet.attn_processors
        }
    )


def install_denoising_processors(unet, cfg_attentions=None) -> None:
    """Make `unet` a denoising net: reference attention in attn1, audio (+ CFG) attention in attn2."""
    cross = attention_names(unet, "attn2")
    if cfg_attentions is not None and len(cfg_attentions) != len(cross):
        raise ValueError(f"{len(cfg_attentions)} CFG attentions for {len(cross)} cross-attention layers")
    processors = {}
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        if name.endswith("attn1"):
            processors[key] = ReferenceAttnProcessor(name)
        else:
            cfg = None if cfg_attentions is None else cfg_attentions[cross.index(name)]
            processors[key] = AudioAttnProcessor(name, cfg)
    unet.set_attn_processor(processors)


def cross_attention_layers(unet) -> list[Attention]:
    """The UNet's attn2 modules in module order (their query widths and heads size the CFG layers)."""
    names = set(attention_names(unet, "attn2"))
    return [m for n, m in unet.named_modules() if n in names]


class TemporalLayers(ModelMixin, ConfigMixin):
    """One `TransformerTemporalModel` per spatial transformer of the denoising net (DESIGN §3).

    Each attends across the F frames at every pixel, with sinusoidal frame positions; its output
    projection is zero-initialised so the layer starts as the identity (an SD1.5-initialised model
    starts as the image model).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, channels: list[int], num_heads: int = 8, norm_num_groups: int = 32, max_frames: int = 32):
        super().__init__()
        self.gradient_checkpointing = False  # set by `enable_gradient_checkpointing`; read by `TemporalHook`
        self.layers = torch.nn.ModuleList(
            TransformerTemporalModel(
                num_attention_heads=num_heads,
                attention_head_dim=c // num_heads,
                in_channels=c,
                norm_num_groups=norm_num_groups,
                positional_embeddings="sinusoidal",
                num_positional_embeddings=max_frames,
            )
            for c in channels
        )
        for layer in self.layers:
            torch.nn.init.zeros_(layer.proj_out.weight)
            torch.nn.init.zeros_(layer.proj_out.bias)

    @staticmethod
    def channels_of(unet) -> list[int]:
        """Input channels of each `Transformer2DModel` in `unet`, in module order."""
        return [m.in_channels for m in unet.modules() if isinstance(m, Transformer2DModel)]


class TemporalHook:
    """Forward hook of a spatial transformer: runs its temporal layer when the call carries a `fada` state.

    A callable object rather than a closure, so `copy.deepcopy` of the model (e.g. for EMA) points the
    copied hook at the copied temporal layer.
    """

    def __init__(self, layer: TransformerTemporalModel, owner: TemporalLayers):
        self.layer = layer
        self.owner = owner  # the `TemporalLayers` holding `layer`: its `gradient_checkpointing` flag

    def __call__(self, module, args, kwargs, output):
        fada = (kwargs.get("cross_attention_kwargs") or {}).get("fada")
        if fada is None or fada.num_frames <= 1:
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample  # (S·F, C, h, w)
        if self.owner.gradient_checkpointing and torch.is_grad_enabled():  # as diffusers' own blocks decide
            sample = torch.utils.checkpoint.checkpoint(self._temporal, sample, fada.num_frames, use_reentrant=False)
        else:
            sample = self._temporal(sample, fada.num_frames)
        return (sample, *output[1:]) if isinstance(output, tuple) else Transformer2DModelOutput(sample=sample)

    def _temporal(self, sample: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.layer(sample, num_frames=num_frames, return_dict=False)[0]  # (S·F, C, h, w)


def attach_temporal_layers(unet, temporal: TemporalLayers) -> list[torch.utils.hooks.RemovableHandle]:
    """Run `temporal.layers[i]` after the i-th spatial transformer of `unet` (forward hooks with kwargs)."""
    spatial = [m for m in unet.modules() if isinstance(m, Transformer2DModel)]
    if len(spatial) != len(temporal.layers):
        raise ValueError(f"{len(temporal.layers)} temporal layers for {len(spatial)} spatial transformers")
    pairs = zip(spatial, temporal.layers, strict=True)
    return [m.register_forward_hook(TemporalHook(layer, temporal), with_kwargs=True) for m, layer in pairs]


class CfgConditioning(ModelMixin, ConfigMixin):
    """The student's CFG conditioning (DESIGN §3, §4 "CFG inside distillation"), zero-initialised.

    mode 'tokens': learnable γ_a, γ_r, γ_b (n_tokens × width) mixed by Eq. 10 (`fada_math.cfg_embedding`)
    and attended by one CFG cross-attention after each audio attention (`AudioAttnProcessor`);
    mode 'layer': the same CFG cross-attentions, but their tokens come from an MLP of the scales (no
    γ tokens); mode 'time-embed': an MLP of the scales added to the UNet's timestep embedding.
    Every path ends in a zero-initialised projection, so a fresh student equals its teacher.
    """

    @register_to_config
    def __init__(
        self,
        mode: str = "tokens",
        n_tokens: int = 4,
        token_dim: int = 768,
        query_dims: list[int] | None = None,
        heads: list[int] | None = None,
        time_embed_dim: int = 1280,
        scale_features: int = 64,
    ):
        super().__init__()
        if mode in ("tokens", "layer"):
            self.attentions = torch.nn.ModuleList(
                Attention(query_dim=q, cross_attention_dim=token_dim, heads=h, dim_head=q // h)
                for q, h in zip(query_dims, heads, strict=True)
            )
            for attention in self.attentions:
                torch.nn.init.zeros_(attention.to_out[0].weight)
                torch.nn.init.zeros_(attention.to_out[0].bias)
        if mode == "tokens":
            self.gamma = torch.nn.Parameter(torch.randn(3, n_tokens, token_dim) * token_dim**-0.5)  # γ_a, γ_r, γ_b
        elif mode == "layer":
            self.scale_mlp = _mlp(2 * scale_features, token_dim, n_tokens * token_dim, zero_last=False)
        elif mode == "time-embed":
            self.scale_mlp = _mlp(2 * scale_features, time_embed_dim, time_embed_dim, zero_last=True)
        else:
            raise ValueError(f"CfgConditioning mode {mode!r}: use 'tokens', 'layer' or 'time-embed'")

    def tokens(self, cfg_a: torch.Tensor, cfg_r: torch.Tensor) -> torch.Tensor:
        """CFG tokens for per-sample scales (S,) → (S, n_tokens, token_dim); Eq. 10 in mode 'tokens'."""
        if self.config.mode == "tokens":
            g_a, g_r, g_b = self.gamma
            return fada_math.cfg_embedding(g_a, g_r, g_b, cfg_a.to(g_a.dtype), cfg_r.to(g_a.dtype))
        out = self.scale_mlp(self._scale_features(cfg_a, cfg_r))  # (S, n·D)
        return out.view(-1, self.config.n_tokens, self.config.token_dim)

    def time_embedding(self, cfg_a: torch.Tensor, cfg_r: torch.Tensor) -> torch.Tensor:
        """Mode 'time-embed': (S,) scales → (S, time_embed_dim), added to the timestep embedding."""
        return self.scale_mlp(self._scale_features(cfg_a, cfg_r))

    def _scale_features(self, cfg_a: torch.Tensor, cfg_r: torch.Tensor) -> torch.Tensor:
        dim = self.config.scale_features
        dtype = next(self.scale_mlp.parameters()).dtype
        # scales of ~1..10 are spread like timesteps of ~100..1000 (diffusers' sinusoidal embedding)
        feats = [get_timestep_embedding(100.0 * c.float().reshape(-1), dim) for c in (cfg_a, cfg_r)]
        return torch.cat(feats, dim=-1).to(dtype)  # (S, 2·dim)


def _mlp(d_in: int, d_hidden: int, d_out: int, zero_last: bool) -> torch.nn.Sequential:
    mlp = torch.nn.Sequential(torch.nn.Linear(d_in, d_hidden), torch.nn.SiLU(), torch.nn.Linear(d_hidden, d_out))
    if zero_last:
        torch.nn.init.zeros_(mlp[-1].weight)
        torch.nn.init.zeros_(mlp[-1].bias)
    return mlp
