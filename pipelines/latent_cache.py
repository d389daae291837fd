"""The latent cache (``--cache-latents DIR``): each clip encoded once, read window by window.

For every clip of a manifest that a run draws from, one safetensors file holds

- ``latents`` (T, C, h, w) in the run's ``latent_precision`` (bf16 by default, half the disk and
  the reads of fp32; fp32 on request): the VAE posterior means × scaling factor of its frames
  (`FadaModel.encode_images`) for a ``latent_codec='vae'`` model; or ``frames`` (T, S, S, 3)
  uint8, the frames resized to the sample size, for a pixel-space model;
- ``audio_features`` (T, D_feat) float32: the per-frame audio features (the dataset windows them).

The folder's ``cache.json`` records the key the latents are valid for: the manifest's hash, the
sample size, codec and latent dtype, a hash of the VAE's weights (rounded to bf16, so that the fp32 VAE of a
teacher run and the bf16 copy a distillation may hold share one cache) and config, and the audio
encoder's settings (and a hash of a wav2vec2 folder's files). A run whose key differs is refused with a message that
names what changed — the folder is never silently rebuilt, since another run may be reading it.
Clips are added on demand: the teacher (tier A) writes the tier-A clips, distillation (tiers A and
B) reads those and adds tier B. Each file appears atomically, so an interrupted build resumes.
In a multi-process run every process encodes its share of the missing clips, on its device: the
missing clips are listed by every process before any is written (a barrier between), so the shares
cover them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.audio import build_audio_encoder
from pipelines.data import WindowDataset, to_unit_range
from pipelines.errors import InputFileError
from pipelines.manifest import manifest_hash
from pipelines.model_config import ModelConfig
from pipelines.progress import log, make_progress

CACHE_FILE = "cache.json"
CACHE_VERSION = 2  # bump when the files' layout changes (2: latents in the key's latent_dtype, bf16 by default)
CLIPS_DIR = "clips"
ENCODE_FRAMES = 16  # frames per VAE encoder call while building


@dataclass(frozen=True)
class CachedClip:
    """One cached clip, opened lazily: slicing reads only the rows asked for."""

    n_frames: int  # T
    frames: object  # safetensors slice of ``latents`` (T, C, h, w) or ``frames`` (T, S, S, 3) uint8
    audio_features: object  # safetensors slice (T, D_feat)


class LatentCache:
    """A cache folder opened for reading; ``latent`` says whether it holds VAE latents."""

    def __init__(self, folder: str | Path, key: dict):
        self.folder = Path(folder)
        self.key = key
        self.latent = key["latent_codec"] == "vae"
        self.latent_dtype = getattr(torch, key.get("latent_dtype") or "float32")  # of the stored latents

    def file(self, clip_id: str) -> Path:
        name = hashlib.sha256(clip_id.encode()).hexdigest()[:32]  # any clip_id makes a safe file name
        return self.folder / CLIPS_DIR / f"{name}.safetensors"

    def clip(self, clip_id: str) -> CachedClip:
        path = self.file(clip_id)
        if not path.is_file():
            raise InputFileError(
                f"latent cache {self.folder} has no entry for clip {clip_id!r}; run with `latent_cache` "
                f"{self.folder} again to add it (the run encodes missing clips before training)."
            )
        handle = safe_open(str(path), framework="pt")
        frames = handle.get_slice("latents" if self.latent else "frames")
        return CachedClip(frames.get_shape()[0], frames, handle.get_slice("audio_features"))

    def missing(self, clip_ids) -> list[int]:
        """Indices of ``clip_ids`` without a cache file."""
        return [i for i, clip_id in enumerate(clip_ids) if not self.file(str(clip_id)).is_file()]


def cache_key(manifest: Path, config: ModelConfig, vae: torch.nn.Module | None,
              latent_dtype: torch.dtype = torch.bfloat16) -> dict:  # fmt: skip
    """What the cached tensors depend on: manifest, sample size, codec weights and latent dtype, audio encoder."""
    key = {
        "version": CACHE_VERSION,
        "manifest_hash": manifest_hash(manifest),
        "sample_size": config.sample_size,
        "latent_codec": config.latent_codec,
        "latent_dtype": str(latent_dtype).removeprefix("torch.") if config.latent_codec == "vae" else None,
        "vae_hash": None,
        "audio_encoder": config.audio_encoder,
        "n_mels": config.n_mels,
        "audio_feature_dim": config.audio_feature_dim,
        "audio_encoder_hash": None,
    }
    if config.latent_codec == "vae":
        digest = hashlib.sha256(repr((config.vae_block_out_channels, config.vae_layers_per_block,
                                      config.vae_norm_num_groups, config.vae_scaling_factor)).encode())  # fmt: skip
        for name, tensor in sorted(vae.state_dict().items()):  # at bf16 precision: a bf16 copy of the same
            digest.update(name.encode())  # VAE (a frozen teacher under --mixed-precision bf16) shares the cache
            digest.update(tensor.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
        key["vae_hash"] = digest.hexdigest()
    if config.audio_encoder == "wav2vec2":
        digest = hashlib.sha256()
        folder = Path(config.audio_encoder_path)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode())
            with path.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
        key["audio_encoder_hash"] = digest.hexdigest()
    return key


def open_cache(folder: str | Path, key: dict, create: bool) -> LatentCache:
    """The cache in ``folder`` for ``key``: created when ``create`` and the folder is new, refused when
    its recorded key differs (the message names what differs)."""
    folder = Path(folder)
    record = folder / CACHE_FILE
    if not record.is_file():
        if folder.exists() and any(folder.iterdir()):
            raise InputFileError(
                f"`latent_cache` {folder} is a non-empty folder without {CACHE_FILE}; pass a new or empty folder."
            )
        if create:
            (folder / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{CACHE_FILE}.{uuid.uuid4().hex[:8]}"
            tmp.write_text(json.dumps(key, indent=1, sort_keys=True))
            os.replace(tmp, record)
        return LatentCache(folder, key)
    saved = json.loads(record.read_text())
    if saved != key:
        changed = sorted(name for name in set(saved) | set(key) if saved.get(name) != key.get(name))
        what = "the manifest changed" if "manifest_hash" in changed else "the model's codec or audio encoder changed"
        what = "an older fada wrote it" if "version" in changed else what
        what = "another `latent_precision`" if changed == ["latent_dtype"] else what
        raise InputFileError(
            f"latent cache {folder} was built for another input ({what}: {', '.join(changed)} differ); "
            "pass a new `latent_cache` folder, or delete this one to rebuild it."
        )
    return LatentCache(folder, key)


def fill_cache(cache: LatentCache, dataset: WindowDataset, encode_images, device: torch.device,
               rank: int = 0, world: int = 1, quiet: bool = False, todo: list[int] | None = None) -> int:  # fmt: skip
    """Encode this process's share of the dataset's clips missing from ``cache``; return how many it wrote.
    Audio features run on ``device`` too.

    The share is ``todo`` (dataset indices) when given — a multi-process run lists the missing clips on every
    process before any is written and hands each its slice — else every world-th missing clip from ``rank``.
    """
    todo = cache.missing(dataset.clip_ids)[rank::world] if todo is None else todo
    if not todo:
        return 0
    audio_encoder = build_audio_encoder(dataset.config)
    if hasattr(audio_encoder, "model"):
        audio_encoder.to(device)  # wav2vec2 on the model's device
    with make_progress(quiet) as progress:
        task = progress.add_task(f"caching {len(todo)} clips in {cache.folder}", total=len(todo))
        for index in todo:
            clip = dataset.decode(index, audio_encoder)
            if cache.latent:
                chunks = []
                for first in range(0, clip.n_frames, ENCODE_FRAMES):
                    images = to_unit_range(clip.frames[first : first + ENCODE_FRAMES]).to(device)  # (n, 3, S, S)
                    chunks.append(encode_images(images).to(cache.latent_dtype).cpu())  # (n, C, h, w)
                tensors = {"latents": torch.cat(chunks).contiguous()}
            else:
                tensors = {"frames": clip.frames}
            tensors["audio_features"] = clip.audio_features
            clip_id = str(dataset.clip_ids[index])
            path = cache.file(clip_id)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            save_file(tensors, str(tmp), metadata={"clip_id": clip_id})
            os.replace(tmp, path)
            progress.advance(task)
    log(f"cached {len(todo)} clips in {cache.folder}", quiet=quiet)
    return len(todo)
