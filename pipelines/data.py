"""The training data: clips of a manifest → frame windows, reference, motion frames, audio features.

One item is one training window of F frames (DESIGN §3):

- ``frames``: F consecutive frames from a random window start, images in [-1, 1], (F, 3, S, S);
- ``reference``: another frame of the same clip, drawn outside the window and its motion frames
  when the clip is long enough, (3, S, S);
- ``motion``: the M frames before the window, (M, 3, S, S); a position before the clip's first
  frame holds the reference image — at the clip start that is the reference repeated, the same
  rule `generate` uses for its first clip;
- ``audio_features``: the windowed audio features of the F frames, (F, W, D_feat), from
  `audio.frame_audio_features` (±audio_window frames).

With a VAE latent cache (`pipelines.latent_cache`) the images come as latents instead:
``latents`` (F, C, h, w), ``reference_latent`` (C, h, w) and ``motion_latents`` (M, C, h, w);
`batch_latents` gives a loss the batch's latents either way, so nothing is encoded twice.

The data streams: a clip is decoded (or its window read from the cache) only when a window of it
is drawn, in `torch.utils.data.DataLoader` workers (`window_batches`). Memory does not grow with
the hours in the manifest: what a process holds is the manifest's rows plus a small LRU of decoded
clips (``memory_mb``, per process; a tiny demo set fits whole and is decoded once), and a cached
clip is read window by window (safetensors slices), never whole.

Items are addressed by a key ``(clip_index, sample_seed)``: everything random about an item comes
from its seed, so a stream of keys from `WindowSampler` (a position counter) replays exactly on
``--resume``, whichever process or worker loads it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.audio import build_audio_encoder
from pipelines.errors import FadaError, ManifestError, MediaError, UsageError
from pipelines.manifest import clip_path, read_manifest
from pipelines.media import read_audio, read_video
from pipelines.model_config import ModelConfig

DATA_COLUMNS = ("clip_id", "video_path", "tier", "n_frames")  # manifest columns the dataset reads
CLIP_MEMORY_MB = 256.0  # default LRU budget of decoded clips per process (≈ 13 s of 512² video)
IMAGE_KEYS = ("frames", "reference", "motion")  # item keys of images in [-1, 1]
LATENT_KEYS = ("latents", "reference_latent", "motion_latents")  # the same as cached VAE latents


@dataclass(frozen=True)
class DecodedClip:
    """One decoded clip: what the LRU holds and what the latent cache stores for pixel-space models."""

    frames: torch.Tensor  # (T, S, S, 3) uint8 RGB, resized to the model's sample_size
    audio_features: torch.Tensor  # (T, D_feat) float32 per-frame audio features (windowed when drawn)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes + self.audio_features.nbytes


class WindowDataset(torch.utils.data.Dataset):
    """Training windows over the clips of ``tiers`` in a manifest (tier A: teacher; B: distillation).

    ``dataset[(clip_index, sample_seed)]`` → dict of ``frames`` (F, 3, S, S), ``reference``
    (3, S, S), ``motion`` (M, 3, S, S), ``audio_features`` (F, W, D_feat); images in [-1, 1].
    With ``cache`` (a `latent_cache.LatentCache` holding every clip) the windows are read from it,
    as latents for a VAE model (``latents``, ``reference_latent``, ``motion_latents``).
    """

    def __init__(
        self,
        manifest: str | Path,
        model_config: ModelConfig,
        tiers: Sequence[str] = ("A",),
        num_frames: int | None = None,
        cache=None,
        memory_mb: float = CLIP_MEMORY_MB,
        identity_augment: float = 0.0,
    ):
        if not 0.0 <= identity_augment <= 1.0:
            raise UsageError(f"identity_augment={identity_augment} must be a probability in [0, 1].")
        self.identity_augment = identity_augment  # probability that an item gets `identity_transform`
        self.manifest = Path(manifest)
        self.config = model_config
        self.tiers = tuple(tiers)
        self.num_frames = model_config.frames_per_clip if num_frames is None else num_frames  # F
        self.num_motion_frames = model_config.motion_frames  # M
        self.cache = cache
        self.memory_budget = int(memory_mb * 2**20)
        rows = select_tiers(self.manifest, self.tiers)
        needed = self.num_frames + 1
        short = rows[rows["n_frames"] < needed]
        if len(short):
            first = short.iloc[0]
            raise MediaError(
                f"clip {first['clip_id']!r} ({first['video_path']}) has {first['n_frames']} frames but training needs "
                f"at least {needed} (F={self.num_frames} plus a reference frame), and {len(short) - 1} more clips "
                "are as short; pass a smaller `frames_per_clip` or use longer clips."
            )
        # fixed-width string arrays, not lists of Python objects: a forked DataLoader worker reads them
        # without copying their pages (reference counts), and a row costs a few hundred bytes at most
        self.clip_ids = np.array([str(c) for c in rows["clip_id"]], dtype=np.str_)
        self.video_paths = np.array([str(p) for p in rows["video_path"]], dtype=np.str_)  # manifest-relative
        self._decoded: collections.OrderedDict[int, DecodedClip] = collections.OrderedDict()  # the LRU
        self._audio_encoder = None  # built on first use, in the process (or worker) that decodes

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by this process's LRU of decoded clips."""
        return sum(clip.nbytes for clip in self._decoded.values())

    def path(self, clip_index: int) -> Path:
        return clip_path(self.manifest, str(self.video_paths[clip_index]))

    # --- decoding -------------------------------------------------------------------------------

    def decode(self, clip_index: int, audio_encoder=None) -> DecodedClip:
        """Decode one clip: frames resized to the model's sample_size, per-frame audio features
        (from ``audio_encoder``, by default one built for this process on the CPU)."""
        clip_id, path = str(self.clip_ids[clip_index]), self.path(clip_index)
        try:
            video, _fps = read_video(path)  # (T, H, W, 3) uint8
            waveform = read_audio(path)  # (N,) float32 at 16 kHz, time 0 = first frame
        except MediaError as exc:
            raise MediaError(
                f"clip {clip_id!r} is unreadable ({exc}); re-create it or drop it from {self.manifest}."
            ) from exc
        needed = self.num_frames + 1
        if len(video) < needed:
            raise MediaError(
                f"clip {clip_id!r} ({path}) has {len(video)} frames but training needs at least {needed} "
                f"(F={self.num_frames} plus a reference frame); pass a smaller `frames_per_clip` or use longer clips."
            )
        frames = torch.from_numpy(video).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        size = self.config.sample_size
        if frames.shape[-2:] != (size, size):
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        frames = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (T, S, S, 3)
        if audio_encoder is None:
            if self._audio_encoder is None:
                self._audio_encoder = build_audio_encoder(self.config)
            audio_encoder = self._audio_encoder
        features = audio_encoder.frame_features(torch.from_numpy(np.asarray(waveform, np.float32)), len(video))
        return DecodedClip(frames, features.float().cpu().contiguous())  # features (T, D)

    def _clip(self, clip_index: int) -> DecodedClip:
        """The decoded clip from the LRU, decoding it (and evicting the oldest past the budget) on a miss."""
        if clip_index in self._decoded:
            self._decoded.move_to_end(clip_index)
            return self._decoded[clip_index]
        clip = self.decode(clip_index)
        self._decoded[clip_index] = clip
        while len(self._decoded) > 1 and self.memory_bytes > self.memory_budget:
            self._decoded.popitem(last=False)
        if self.memory_bytes > self.memory_budget:  # one clip over the budget: used now, not kept
            self._decoded.pop(clip_index)
        return clip

    # --- items ----------------------------------------------------------------------------------

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        clip_index, sample_seed = key
        source = self.cache.clip(str(self.clip_ids[clip_index])) if self.cache is not None else self._clip(clip_index)
        n = source.n_frames
        rng = np.random.default_rng(sample_seed)
        f, m = self.num_frames, self.num_motion_frames
        start = int(rng.integers(0, n - f + 1))
        reference_index = int(rng.choice(reference_candidates(n, start, f, m)))
        first = max(0, start - m)  # motion positions before frame 0 hold the reference
        images = source.frames[first : start + f]  # (start + F − first, ...) uint8 frames or latents
        reference = source.frames[reference_index : reference_index + 1][0]
        if images.dtype == torch.uint8:
            images, reference = to_unit_range(images), to_unit_range(reference)  # (…, 3, S, S) in [-1, 1]
        motion = torch.cat([reference[None].expand(m - (start - first), *reference.shape), images[: start - first]])
        names = LATENT_KEYS if self.cache is not None and self.cache.latent else IMAGE_KEYS
        if self.identity_augment and rng.random() < self.identity_augment:  # drawn after the window: same keys,
            if names is LATENT_KEYS:  # same windows with or without augmentation
                raise UsageError(
                    "identity_augment transforms pixels and cannot apply to cached VAE latents; "
                    "set identity_augment=0 or train without latent_cache."
                )
            images, reference, motion = identity_transform([images, reference, motion], rng)
        return {
            names[0]: images[start - first :],  # (F, C, h, w)
            names[1]: reference,  # (C, h, w)
            names[2]: motion,  # (M, C, h, w)
            "audio_features": window_features(source.audio_features, start, f, self.config.audio_window),
        }

    def batch(self, keys: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Stack the items of ``keys``: every tensor gains a leading batch dimension B."""
        return collate_items([self[key] for key in keys])


def collate_items(items: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([item[name] for item in items]) for name in items[0]}


def window_features(features, start: int, f: int, window: int) -> torch.Tensor:
    """Frames [start, start + f) of `audio.frame_audio_features` from per-frame features (T, D) — or
    a safetensors slice of them — read around the window only → (F, W = 2·window + 1, D)."""
    n = features.shape[0] if torch.is_tensor(features) else features.get_shape()[0]
    low, high = max(0, start - window), min(n, start + f + window)
    part = features[low:high]  # (high − low, D)
    index = np.clip(np.arange(start, start + f)[:, None] + np.arange(-window, window + 1)[None, :], 0, n - 1)
    return part[torch.from_numpy(index - low)]  # (F, W, D)


def batch_latents(encode_images, batch: dict, motion: bool = True, dtype: torch.dtype | None = None):
    """The batch's latents ``(z0 (B, F, C, h, w), reference_latent (B, C, h, w), motion_latents (B, M, C, h, w))``:
    read from the latent cache when the batch holds them, else encoded with ``encode_images`` (no gradient).

    ``motion=False`` skips the motion frames (None), as the image stage does. ``dtype``: the precision the
    latents are rounded to whether cached or encoded (`TrainConfig.latent_precision`; None keeps them).
    """
    if "latents" in batch:
        latents = batch["latents"], batch["reference_latent"], batch["motion_latents"] if motion else None
    else:
        with torch.no_grad():
            z0 = encode_images(batch["frames"])
            reference_latent = encode_images(batch["reference"])
            latents = z0, reference_latent, encode_images(batch["motion"]) if motion else None
    if dtype is None:
        return latents
    return tuple(None if x is None else x.to(dtype) for x in latents)


def select_tiers(manifest: Path, tiers: Sequence[str]):
    """The manifest rows of ``tiers``; ManifestError naming the tiers present when there are none."""
    df = read_manifest(manifest, required=DATA_COLUMNS)
    rows = df[df["tier"].isin(list(tiers))]
    if len(rows) == 0:
        counts = df["tier"].fillna("none").value_counts()
        present = ", ".join(f"{tier} ({count})" for tier, count in counts.items()) or "no clips at all"
        raise ManifestError(
            f"manifest {manifest} has no tier-{'/'.join(tiers)} clips (tiers present: {present}); "
            "score and tier clips with `fada curate`, or make a demo set with `fada demo-data OUT_DIR`."
        )
    return rows.reset_index(drop=True)


def reference_candidates(n: int, start: int, f: int, m: int) -> np.ndarray:
    """Frame indices a reference may come from: outside the window and its motion frames if possible."""
    everything = np.arange(n)
    for low in (start - m, start):  # first try to avoid the motion frames too, then only the window
        outside = everything[(everything < low) | (everything >= start + f)]
        if len(outside):
            return outside
    return everything


# YIQ (NTSC) colour space: Y is luma; a rotation in the I–Q plane turns every hue by the same angle
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def identity_transform(images: Sequence[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    """One random change of a face's look, applied alike to every tensor in ``images`` ((…, 3, S, S) in [-1, 1]).

    The demo data draws all its identities from one photograph in other colours, so a teacher can
    memorise the training identities' colour schemes instead of copying the reference. Applied to a
    window's target, reference and motion frames together, these transforms make a clip a new
    identity without changing what the model must learn (copy the reference, move with the audio):
    a hue rotation (any angle, in YIQ), a permutation of the colour channels, a contrast scale in
    [0.8, 1.2] and a brightness shift of ±0.1 (in [0, 1] units), a horizontal flip with probability
    ½, and a shift of up to S/32 pixels each way (edges repeated).
    """
    theta = rng.uniform(-np.pi, np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    colour = _YIQ_TO_RGB @ rotation.float() @ _RGB_TO_YIQ  # (3, 3) on RGB
    colour = colour[torch.from_numpy(rng.permutation(3))]  # output channels permuted
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    flip = bool(rng.random() < 0.5)
    size = images[0].shape[-1]
    reach = max(1, round(size / 32))
    dy, dx = (int(v) for v in rng.integers(-reach, reach + 1, size=2))
    out = []
    for x in images:
        rgb = (x + 1) / 2  # [0, 1]
        rgb = torch.einsum("ij,...jhw->...ihw", colour.to(rgb.dtype), rgb)
        rgb = (rgb - 0.5) * contrast + 0.5 + brightness
        y = (rgb.clamp(0, 1) * 2 - 1).to(x.dtype)
        if flip:
            y = y.flip(-1)
        if dx or dy:
            lead = y.shape[:-3]
            flat = y.reshape(-1, *y.shape[-3:])  # (N, 3, S, S)
            padded = F.pad(flat, (reach, reach, reach, reach), mode="replicate")
            flat = padded[..., reach + dy : reach + dy + size, reach + dx : reach + dx + size]
            y = flat.reshape(*lead, *flat.shape[-3:])
        out.append(y.contiguous())
    return out


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) → float (..., 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


class WindowSampler:
    """An endless, resumable stream of item keys ``(clip_index, sample_seed)``.

    Position p of the stream lies in epoch p // n, which visits every clip once in an order
    shuffled by (seed, epoch); its sample seed derives from (seed, p). The whole state is
    ``position``, saved in checkpoints. The epoch's order is drawn once and kept (n int64s, 8 MB
    at a million clips), so a key costs O(1) — not a permutation of every clip per key.
    """

    def __init__(self, n_clips: int, seed: int, position: int = 0):
        self.n_clips = n_clips
        self.seed = seed
        self.position = position
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation of the clips)

    def take(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` keys of the stream."""
        keys = [self.key(p) for p in range(self.position, self.position + count)]
        self.position += count
        return keys

    def advance(self, count: int) -> None:
        """Move past the next ``count`` keys without drawing them (the training loop's saved position)."""
        self.position += count

    def key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n_clips)
        sample_seed = int(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])
        return int(self.epoch_order(epoch)[offset]), sample_seed

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The clip order of ``epoch``: a permutation drawn from (seed, epoch), kept until another epoch is wanted."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_clips))
        return self._order[1]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "n_clips": self.n_clips}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_clips"] != self.n_clips:
            raise ManifestError(
                f"the checkpoint was trained on {state['n_clips']} clips but the manifest now selects "
                f"{self.n_clips}; resume with the same manifest and tiers, or start a new `out`."
            )
        self.seed, self.position, self._order = state["seed"], state["position"], None


# --- loading in DataLoader workers -------------------------------------------------------------------


class _KeyBatches(torch.utils.data.Sampler):
    """This process's share of each micro-batch of the key stream, from ``position`` on (endless)."""

    def __init__(self, sampler: WindowSampler, batch_size: int, rank: int, world: int):
        self.stream = WindowSampler(sampler.n_clips, sampler.seed, sampler.position)  # a copy: prefetching
        self.batch_size, self.rank, self.world = batch_size, rank, world  # must not move the saved position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            yield self.stream.take(self.batch_size * self.world)[self.rank :: self.world]


class _Failure:
    """A `FadaError` raised in a worker, carried to the main process as a value (one-line message kept)."""

    def __init__(self, error: FadaError):
        self.error = error


class _CatchingDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except FadaError as error:
            return _Failure(error)


def _collate(items: list) -> dict[str, torch.Tensor] | _Failure:
    failures = [item for item in items if isinstance(item, _Failure)]
    return failures[0] if failures else collate_items(items)


def default_num_workers(device: torch.device) -> int:
    """0 on the CPU (the training step already uses every core), else min(4, half the cores)."""
    return 0 if device.type == "cpu" else max(1, min(4, (os.cpu_count() or 2) // 2))


def window_batches(
    dataset: WindowDataset,
    sampler: WindowSampler,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of this process's B windows per micro-batch, from the sampler's position on.

    Each micro-batch takes the next B·world keys of the stream and this process keeps every
    world-th from ``rank`` (the shard of accelerate process ``rank``). Workers load whole batches in
    order, so 0 and N workers give the same batches. The caller advances ``sampler`` by B·world
    per micro-batch it consumes (the position a checkpoint saves); prefetching does not move it.
    """
    loader = torch.utils.data.DataLoader(
        _CatchingDataset(dataset),
        batch_sampler=_KeyBatches(sampler, batch_size, rank, world),
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
    )
    return _raising(loader)  # the loader (and its copy of the stream) exists now, not at the first next()


def _raising(loader) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches; a worker's `FadaError` is raised here with its one-line message."""
    for batch in loader:
        if isinstance(batch, _Failure):
            raise batch.error
        yield batch
