"""The training dataset: clips of a manifest → frame windows, reference, motion frames, audio features.

One item is one training clip of F frames (SPEC §3):

- ``frames``: F consecutive frames from a random window start, images in [-1, 1], (F, 3, S, S);
- ``reference``: another frame of the same clip, drawn outside the window and its motion frames
  when the clip is long enough, (3, S, S);
- ``motion``: the M frames before the window, (M, 3, S, S); a position before the clip's first
  frame holds the reference image — at the clip start that is the reference repeated, the same
  rule `generate` uses for its first clip;
- ``audio_features``: the windowed audio features of the F frames, (F, W, D_feat), from
  `audio.frame_audio_features` (±audio_window frames).

Every clip is decoded once, resized to the model's ``sample_size`` and kept in memory as uint8 with
its audio features (computed once per clip, never per step): 3·S² bytes per frame plus
4·W·D_feat per frame of features — about 1.9 MB per second of 64-px video with the demo preset.

Items are addressed by a key ``(clip_index, sample_seed)``: everything random about an item comes
from its seed, so a stream of keys from `WindowSampler` (a position counter) replays exactly on
``--resume``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.audio import build_audio_encoder, frame_audio_features
from pipelines.errors import ManifestError, MediaError
from pipelines.manifest import clip_path, read_manifest
from pipelines.media import read_audio, read_video
from pipelines.model_config import ModelConfig
from pipelines.progress import log, make_progress

DATA_COLUMNS = ("clip_id", "video_path", "tier")  # manifest columns the dataset reads


@dataclass(frozen=True)
class CachedClip:
    """One decoded clip, kept in memory."""

    clip_id: str  # the manifest's clip_id
    path: Path  # absolute path of the mp4
    frames: torch.Tensor  # (T, S, S, 3) uint8 RGB, resized to the model's sample_size
    audio_features: torch.Tensor  # (T, W, D_feat) float32 windowed audio features


class ClipDataset(torch.utils.data.Dataset):
    """Training windows over the clips of ``tiers`` in a manifest (tier A: teacher; B: distillation).

    ``dataset[(clip_index, sample_seed)]`` → dict of ``frames`` (F, 3, S, S), ``reference``
    (3, S, S), ``motion`` (M, 3, S, S), ``audio_features`` (F, W, D_feat); images in [-1, 1].
    """

    def __init__(
        self,
        manifest: str | Path,
        model_config: ModelConfig,
        tiers: Sequence[str] = ("A",),
        num_frames: int | None = None,
        quiet: bool = False,
    ):
        self.manifest = Path(manifest)
        self.config = model_config
        self.tiers = tuple(tiers)
        self.num_frames = model_config.frames_per_clip if num_frames is None else num_frames  # F
        self.num_motion_frames = model_config.motion_frames  # M
        rows = select_tiers(self.manifest, self.tiers)
        encoder = build_audio_encoder(model_config)
        self.clips: list[CachedClip] = []
        with make_progress(quiet) as progress:
            task = progress.add_task(f"decoding {len(rows)} tier-{'/'.join(self.tiers)} clips", total=len(rows))
            for clip_id, relative in zip(rows["clip_id"], rows["video_path"], strict=True):
                self.clips.append(self._decode(str(clip_id), clip_path(self.manifest, relative), encoder))
                progress.advance(task)
        log(
            f"cached {len(self.clips)} clips, {sum(len(c.frames) for c in self.clips)} frames, "
            f"{self.memory_bytes / 2**20:.1f} MB in memory",
            quiet=quiet,
        )

    def _decode(self, clip_id: str, path: Path, encoder) -> CachedClip:
        """Decode one clip, resize its frames and compute its audio features, once."""
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
                f"(F={self.num_frames} plus a reference frame); pass a smaller --frames or use longer clips."
            )
        frames = torch.from_numpy(video).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        size = self.config.sample_size
        if frames.shape[-2:] != (size, size):
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        frames = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (T, S, S, 3)
        features = frame_audio_features(waveform, len(video), encoder)  # (T, W, D)
        return CachedClip(clip_id, path, frames, features.float().contiguous())

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the in-memory cache (frames + audio features)."""
        return sum(c.frames.nbytes + c.audio_features.nbytes for c in self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        clip_index, sample_seed = key
        clip = self.clips[clip_index]
        rng = np.random.default_rng(sample_seed)
        n, f, m = len(clip.frames), self.num_frames, self.num_motion_frames
        start = int(rng.integers(0, n - f + 1))
        reference_index = int(rng.choice(reference_candidates(n, start, f, m)))
        reference = to_unit_range(clip.frames[reference_index])  # (3, S, S)
        motion = (
            torch.stack([to_unit_range(clip.frames[i]) if i >= 0 else reference for i in range(start - m, start)])
            if m
            else reference.new_zeros((0, *reference.shape))
        )  # (M, 3, S, S)
        return {
            "frames": to_unit_range(clip.frames[start : start + f]),  # (F, 3, S, S)
            "reference": reference,
            "motion": motion,
            "audio_features": clip.audio_features[start : start + f],  # (F, W, D_feat)
        }

    def batch(self, keys: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Stack the items of ``keys``: every tensor gains a leading batch dimension B."""
        items = [self[key] for key in keys]
        return {name: torch.stack([item[name] for item in items]) for name in items[0]}


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


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) → float (..., 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


class WindowSampler:
    """An endless, resumable stream of item keys ``(clip_index, sample_seed)``.

    Position p of the stream lies in epoch p // n, which visits every clip once in an order
    shuffled by (seed, epoch); its sample seed derives from (seed, p). The whole state is
    ``position``, saved in checkpoints.
    """

    def __init__(self, n_clips: int, seed: int, position: int = 0):
        self.n_clips = n_clips
        self.seed = seed
        self.position = position

    def take(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` keys of the stream."""
        keys = [self.key(p) for p in range(self.position, self.position + count)]
        self.position += count
        return keys

    def key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n_clips)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_clips)
        sample_seed = int(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])
        return int(order[offset]), sample_seed

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "n_clips": self.n_clips}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_clips"] != self.n_clips:
            raise ManifestError(
                f"the checkpoint was trained on {state['n_clips']} clips but the manifest now selects "
                f"{self.n_clips}; resume with the same manifest and tiers, or start a new --out."
            )
        self.seed, self.position = state["seed"], state["position"]
