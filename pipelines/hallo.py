"""`fada import hallo`: Hallo/Hallo2's released checkpoint as a normal fada teacher (docs/DESIGN.md §3c).

The release folder (Hallo's ``pretrained_models/``; Hallo2 ships the same ``hallo/net.pth`` layout)::

    hallo/net.pth                       reference_unet, denoising_unet, face_locator, imageproj, audioproj
    stable-diffusion-v1-5/unet/config.json   the UNets' sizes
    sd-vae-ft-mse/                      the VAE (config.json + safetensors, or a .bin state dict)
    wav2vec/wav2vec2-base-960h/         the audio encoder (read at generation time, not copied)
    face_analysis/models/*.onnx         InsightFace (read at generation time, not copied)
    motion_module/mm_sd_v15_v2.ckpt     not read: net.pth holds the trained motion modules

`hallo_key_map` maps every key of ``net.pth`` to a fada component and key, strictly: a key it does
not know, or a component key nothing fills, is a one-line error naming the key. Torch pickles are
read here only, with ``torch.load(weights_only=True)``; the teacher written is safetensors + JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipelines.checkpoint import save_checkpoint
from pipelines.errors import CheckpointError, InputFileError, UsageError
from pipelines.model_config import ModelConfig, get_preset

NET_FILE = Path("hallo") / "net.pth"
UNET_CONFIG = Path("stable-diffusion-v1-5") / "unet" / "config.json"
VAE_DIR = Path("sd-vae-ft-mse")
WAV2VEC_DIR = Path("wav2vec") / "wav2vec2-base-960h"
FACE_ANALYSIS_DIR = Path("face_analysis")
SOURCE = "hallo"  # `fada info` shows it

# net.pth prefix → fada component (the UNets keep diffusers' names, so only prefixes move)
DIRECT = {
    "reference_unet": "reference_unet",
    "face_locator": "face_locator",
    "imageproj": "identity_projection",
    "audioproj": "audio_projection",
}
# fada keys Hallo's checkpoint does not have: its reference net has no output head (`_out_channels`), whose
# output fada never reads (`model.freeze_reference_tail`); filled with the identity norm and a zero conv
NOT_IN_HALLO = {
    "reference_unet": {
        "conv_norm_out.weight": 1.0,
        "conv_norm_out.bias": 0.0,
        "conv_out.weight": 0.0,
        "conv_out.bias": 0.0,
    }
}
_MODULE_KEY = re.compile(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\.(audio_modules|motion_modules)\.(\d+)\.(.+)$")


def hallo_key_map(keys, denoising_unet) -> dict[str, tuple[str, str]]:
    """net.pth key → (fada component, key) for every key; `CheckpointError` naming the first unknown one.

    ``denoising_unet`` is the fada model's (its spatial transformers fix the order of the audio and
    motion modules: Hallo's ``{block}.audio_modules.{j}`` runs after ``{block}.attentions.{j}``).
    """
    from pipelines.hallo_modules import spatial_transformers

    transformers = {name: i for i, (name, _) in enumerate(spatial_transformers(denoising_unet))}
    resnet_blocks = [
        f"down_blocks.{i}" for i, b in enumerate(denoising_unet.down_blocks) if not getattr(b, "attentions", None)
    ]
    resnet_blocks += [
        f"up_blocks.{i}" for i, b in enumerate(denoising_unet.up_blocks) if not getattr(b, "attentions", None)
    ]
    per_block = denoising_unet.config.layers_per_block
    mapping = {}
    for key in keys:
        prefix, _, rest = key.partition(".")
        if prefix in DIRECT:
            mapping[key] = (DIRECT[prefix], rest)
            continue
        if prefix != "denoising_unet":
            raise CheckpointError(_unmapped(key))
        match = _MODULE_KEY.match(rest)
        if match is None:
            mapping[key] = ("denoising_unet", rest)
            continue
        block, kind, j, tail = match.group(1), match.group(2), int(match.group(3)), match.group(4)
        attention = f"{block}.attentions.{j}"
        if attention in transformers:
            component = kind
            mapping[key] = (component, f"layers.{transformers[attention]}.{tail}")
        elif kind == "motion_modules" and block in resnet_blocks:
            layers = per_block + (1 if block.startswith("up") else 0)
            index = resnet_blocks.index(block)
            offset = sum(per_block + (1 if b.startswith("up") else 0) for b in resnet_blocks[:index])
            if j >= layers:
                raise CheckpointError(_unmapped(key))
            mapping[key] = ("motion_modules", f"resnet_layers.{offset + j}.{tail}")
        else:
            raise CheckpointError(_unmapped(key))
    return mapping


def _unmapped(key: str) -> str:
    return (
        f"net.pth key {key!r} has no place in fada's hallo family; this is not Hallo/Hallo2's released layout "
        "(reference_unet, denoising_unet, face_locator, imageproj, audioproj) — pass the release's "
        "pretrained_models folder."
    )


def load_state_dict_strict(model, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (net.pth) into ``model`` through `hallo_key_map`; every key both ways, shapes equal."""
    mapping = hallo_key_map(state, model.denoising_unet)
    components = model.components()
    targets = {name: components[name].state_dict(keep_vars=True) for name in {c for c, _ in mapping.values()}}
    filled: dict[str, set[str]] = {name: set() for name in targets}
    for key, (component, target) in mapping.items():
        own = targets[component]
        if target not in own:
            raise CheckpointError(
                f"net.pth key {key!r} maps to {component}.{target}, which fada's {model.config.preset!r} config "
                "does not have; the release's UNet config and net.pth disagree, or this is not Hallo's checkpoint."
            )
        if tuple(own[target].shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"net.pth key {key!r} has shape {tuple(state[key].shape)} but {component}.{target} is "
                f"{tuple(own[target].shape)}; the release's config files do not describe this net.pth."
            )
        filled[component].add(target)
    for component, own in targets.items():
        missing = sorted(set(own) - filled[component] - set(NOT_IN_HALLO.get(component, {})))
        if missing:
            raise CheckpointError(
                f"net.pth has nothing for {component}.{missing[0]} ({len(missing)} key(s) missing); it is "
                "incomplete or from another model — pass Hallo's released hallo/net.pth."
            )
    for component in targets:
        loaded = {target: state[key] for key, (c, target) in mapping.items() if c == component}
        for target, value in NOT_IN_HALLO.get(component, {}).items():
            loaded[target] = torch.full_like(targets[component][target], value, device="cpu")
        components[component].load_state_dict(loaded, strict=True, assign=True)


def read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a torch pickle, read with ``weights_only=True`` (the only place fada does)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"torch.load(weights_only=True) refused {path} ({first}); fada reads only plain state dicts of tensors — "
            "re-save it with torch.save(model.state_dict(), ...) from Hallo's own environment."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors; pass Hallo's released hallo/net.pth.")
    return state


def _json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InputFileError(f"{path} is missing ({what}); pass the folder laid out as Hallo's pretrained_models/.")
    return json.loads(path.read_text())


def release_config(pretrained: Path, identity: str = "insightface", frames_per_clip: int = 16) -> ModelConfig:
    """The `hallo` preset with the sizes the release's config files give (UNet, VAE, wav2vec2)."""
    unet = _json(pretrained / UNET_CONFIG, "the SD1.5 UNet config")
    vae = _json(pretrained / VAE_DIR / "config.json", "the VAE config")
    wav2vec = pretrained / WAV2VEC_DIR
    hidden = _json(wav2vec / "config.json", "the wav2vec2 config")
    face = pretrained / FACE_ANALYSIS_DIR
    if identity == "insightface" and not any((face / "models").glob("*.onnx")):
        raise InputFileError(
            f"{face / 'models'} holds no InsightFace .onnx models; put Hallo's face_analysis/ there, or import with "
            "`identity` none (the null identity for every portrait)."
        )
    heads = unet.get("attention_head_dim", 8)
    overrides = dict(
        sample_size=int(unet.get("sample_size", 64)) * 2 ** (len(vae["block_out_channels"]) - 1),
        latent_channels=int(unet.get("in_channels", 4)),
        block_out_channels=tuple(unet["block_out_channels"]),
        layers_per_block=int(unet["layers_per_block"]),
        norm_num_groups=int(unet.get("norm_num_groups", 32)),
        attention_head_dim=int(heads if isinstance(heads, int) else heads[0]),
        cross_attention_dim=int(unet["cross_attention_dim"]),
        vae_block_out_channels=tuple(vae["block_out_channels"]),
        vae_layers_per_block=int(vae.get("layers_per_block", 2)),
        vae_norm_num_groups=int(vae.get("norm_num_groups", 32)),
        vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
        audio_encoder_path=str(wav2vec.resolve()),
        audio_layers=int(hidden["num_hidden_layers"]),
        audio_feature_dim=int(hidden["num_hidden_layers"]) * int(hidden["hidden_size"]),
        frames_per_clip=frames_per_clip,
        identity_encoder=identity,
        face_analysis_path=str(face.resolve()) if identity == "insightface" else None,
    )
    return get_preset("hallo", **overrides)


def _sizes_from_net(config: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig:
    """Widths only net.pth knows (identity tokens, audio projection, face locator, position table)."""
    try:
        proj = state["imageproj.proj.weight"]  # (n·D, E)
        norm = state["imageproj.norm.weight"]  # (D,)
        audio1, audio3 = state["audioproj.proj1.weight"], state["audioproj.proj3.weight"]  # (H, W·D_feat), (N·D, H)
        locator = [state["face_locator.conv_in.weight"].shape[0]]
        locator += [state[f"face_locator.blocks.{i}.weight"].shape[0] for i in (1, 3, 5)]
    except KeyError as exc:
        raise CheckpointError(f"net.pth has no {exc.args[0]!r}; pass Hallo's released hallo/net.pth.") from None
    pe = [v for k, v in state.items() if k.endswith("pos_encoder.pe")]
    window = audio1.shape[1] // config.audio_feature_dim
    if window * config.audio_feature_dim != audio1.shape[1] or window % 2 == 0:
        raise CheckpointError(
            f"net.pth's audioproj reads {audio1.shape[1]} features per frame, not a window of "
            f"{config.audio_feature_dim}-d wav2vec2 frames; the wav2vec2 folder does not match this checkpoint."
        )
    return dataclasses.replace(
        config,
        identity_embedding_dim=int(proj.shape[1]),
        identity_tokens=int(proj.shape[0] // norm.shape[0]),
        audio_hidden_dim=int(audio1.shape[0]),
        audio_tokens=int(audio3.shape[0] // config.cross_attention_dim),
        audio_window=window // 2,
        face_locator_channels=tuple(int(c) for c in locator),
        temporal_max_frames=int(pe[0].shape[1]) if pe else config.temporal_max_frames,
    )


def read_vae_state(folder: Path) -> dict[str, torch.Tensor]:
    """The VAE's weights: safetensors if there, else its .bin state dict (weights_only)."""
    safetensors = folder / "diffusion_pytorch_model.safetensors"
    if safetensors.is_file():
        return load_file(str(safetensors))
    binary = folder / "diffusion_pytorch_model.bin"
    if binary.is_file():
        return read_torch_state(binary)
    raise InputFileError(f"{folder} has no diffusion_pytorch_model.safetensors or .bin; pass the sd-vae-ft-mse folder.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_hallo(
    pretrained: str | Path,
    out: str | Path,
    identity: str = "insightface",
    frames_per_clip: int = 16,
    overwrite: bool = False,
) -> Path:
    """Write the fada teacher checkpoint of a Hallo/Hallo2 release folder to ``out``; return ``out``."""
    from pipelines.model import FadaModel

    pretrained, out = Path(pretrained), Path(out)
    # 1. check inputs
    if identity not in ("insightface", "none"):
        raise UsageError(f"`identity` {identity!r} is not valid; use insightface or none.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty; pass `overwrite` to replace it, or pick a new `out`.")
    net = pretrained / NET_FILE
    if not net.is_file():
        raise InputFileError(f"{net} is missing; pass Hallo's pretrained_models folder (it holds hallo/net.pth).")
    config = release_config(pretrained, identity, frames_per_clip)
    # 2. read the tensors (net.pth: the one torch pickle fada reads), size the config, build on the meta device
    state = read_torch_state(net)
    config = _sizes_from_net(config, state)
    with torch.device("meta"):
        model = FadaModel.from_config(config)
    load_state_dict_strict(model, state)
    vae_state = read_vae_state(pretrained / VAE_DIR)
    own = model.vae.state_dict()
    unknown, missing = sorted(set(vae_state) - set(own)), sorted(set(own) - set(vae_state))
    if unknown or missing:
        name = (unknown or missing)[0]
        raise CheckpointError(
            f"the VAE in {pretrained / VAE_DIR} does not fit its config: {name!r} is unexpected or missing."
        )
    model.vae.load_state_dict(vae_state, strict=True, assign=True)
    model.audio_projection.null_tokens = torch.zeros(config.audio_tokens, config.cross_attention_dim)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise CheckpointError(f"nothing in {pretrained} fills {name}; this release is incomplete.")
    model.float()
    # 3. a normal teacher checkpoint, recording where it came from
    source = {
        "source": SOURCE,
        "net": str(net.resolve()),
        "net_sha256": sha256(net),
        "keys": len(state),
        "not_in_source": {c: sorted(k) for c, k in NOT_IN_HALLO.items()},
    }
    record = {"model": config.to_dict(), "stages": [{"stage": "imported", "steps": 0}], "source": source}
    return save_checkpoint(out, stage="teacher", mode="teacher", config=record, components=model.components(),
                           step=0, extra={"source": source})  # fmt: skip
