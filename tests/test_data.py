"""The streamed training data (`pipelines.data`) and the latent cache (`pipelines.latent_cache`) on real
mp4 clips: the same windows for a seed, workers and ranks, flat memory, cache round trip and invalidation."""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.audio import frame_audio_features
from pipelines.data import WindowDataset, WindowSampler, batch_latents, reference_candidates, window_batches
from pipelines.errors import InputFileError
from pipelines.latent_cache import CACHE_FILE, cache_key, fill_cache, open_cache
from pipelines.manifest import read_manifest, write_manifest
from pipelines.media import read_audio, write_video
from pipelines.model import FadaModel
from pipelines.model_config import get_preset
from pipelines.schedulers import sd15_alphas_cumprod
from pipelines.train_teacher import TeacherTrainConfig, teacher_loss

TINY = get_preset("tiny")
# the tiny preset with a tiny VAE: 32-px frames → 4×16×16 latents
TINY_VAE = dataclasses.replace(
    TINY, latent_codec="vae", latent_channels=4, vae_block_out_channels=(8, 16), vae_layers_per_block=1,
    vae_norm_num_groups=4,
)  # fmt: skip


def take(batches, count: int) -> list[dict]:
    return list(itertools.islice(batches, count))


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_same_seed_draws_the_same_windows_and_they_are_the_clips_frames(manifest):
    dataset = WindowDataset(manifest, TINY)
    keys = WindowSampler(len(dataset), seed=5).take(6)
    again = WindowDataset(manifest, TINY).batch(WindowSampler(len(dataset), seed=5).take(6))
    batch = dataset.batch(keys)
    assert_same_batches([batch], [again])
    other = dataset.batch(WindowSampler(len(dataset), seed=6).take(6))
    assert not torch.equal(batch["frames"], other["frames"])
    f, m = TINY.frames_per_clip, TINY.motion_frames
    assert batch["frames"].shape == (6, f, 3, 32, 32) and batch["motion"].shape == (6, m, 3, 32, 32)
    # item 0 against the clip decoded whole (as the dataset did before it streamed)
    clip_index, seed = keys[0]
    clip = dataset.decode(clip_index)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, clip.n_frames - f + 1))
    reference = int(rng.choice(reference_candidates(clip.n_frames, start, f, m)))
    unit = clip.frames.permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(batch["frames"][0], unit[start : start + f])
    assert torch.equal(batch["reference"][0], unit[reference])
    motion = [unit[i] if i >= 0 else unit[reference] for i in range(start - m, start)]
    assert torch.equal(batch["motion"][0], torch.stack(motion))
    whole = frame_audio_features(read_audio(dataset.path(clip_index)), clip.n_frames, TINY)  # (T, W, D)
    assert torch.equal(batch["audio_features"][0], whole[start : start + f])
    single = WindowDataset(manifest, TINY, num_frames=1)[keys[0]]  # the image stage draws single frames
    assert single["frames"].shape == (1, 3, 32, 32) and single["audio_features"].shape[0] == 1


def test_two_workers_give_the_same_batches_as_none_and_ranks_share_each_micro_batch(manifest):
    dataset = WindowDataset(manifest, TINY)
    sampler = WindowSampler(len(dataset), seed=1, position=4)
    in_process = take(window_batches(dataset, sampler, batch_size=2, num_workers=0), 4)
    workers = take(window_batches(dataset, sampler, batch_size=2, num_workers=2), 4)
    assert_same_batches(in_process, workers)
    assert sampler.position == 4  # loading (and prefetching) leaves the saved stream position alone
    expected = [dataset.batch(sampler.take(2)) for _ in range(4)]
    assert_same_batches(in_process, expected)
    # two accelerate ranks: each takes every other window of the same 2·B keys
    sampler = WindowSampler(len(dataset), seed=1)
    ranks = [take(window_batches(dataset, sampler, 2, rank, world=2), 2) for rank in (0, 1)]
    whole = take(window_batches(dataset, sampler, 4), 2)
    for step in range(2):
        for rank in (0, 1):
            assert torch.equal(ranks[rank][step]["frames"], whole[step]["frames"][rank::2])


def legacy_key(seed: int, n_clips: int, position: int) -> tuple[int, int]:
    """`WindowSampler.key` before issue 21 (a permutation of every clip per key): the keys must not change."""
    epoch, offset = divmod(position, n_clips)
    order = np.random.default_rng([seed, epoch]).permutation(n_clips)
    sample_seed = int(np.random.SeedSequence([seed, position]).generate_state(1)[0])
    return int(order[offset]), sample_seed


@pytest.mark.parametrize(("seed", "n_clips"), [(0, 1), (3, 7), (11, 1000)])
def test_window_sampler_keys_are_those_of_the_per_key_permutation(seed, n_clips):
    """One permutation per epoch, kept, gives the keys the old per-key permutation gave: in order across
    epochs, jumping back to an earlier epoch, after `advance`, and after a restored state."""
    sampler = WindowSampler(n_clips, seed)
    positions = [*range(3 * n_clips + 2), 2, n_clips + 1, 0, 5 * n_clips + 3]
    assert [sampler.key(p) for p in positions] == [legacy_key(seed, n_clips, p) for p in positions]
    sampler.advance(2 * n_clips + 1)
    assert sampler.take(3) == [legacy_key(seed, n_clips, p) for p in range(2 * n_clips + 1, 2 * n_clips + 4)]
    restored = WindowSampler(n_clips, seed)
    restored.key(0)  # holds epoch 0's order; the restored position must not reuse it for another seed
    restored.load_state_dict({"position": 1, "seed": seed + 1, "n_clips": n_clips})
    assert restored.take(2) == [legacy_key(seed + 1, n_clips, p) for p in (1, 2)]


def write_clips(folder, count: int, size: int = 64, frames: int = 25) -> pd.DataFrame:
    """``count`` real mp4 clips of noise with a tone (1 s), and their manifest rows (all tier A)."""
    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
        audio = (0.1 * np.sin(np.arange(frames * 640) * (0.05 + 0.01 * i))).astype(np.float32)
        write_video(folder / "clips" / f"c{i}.mp4", video, 25.0, audio)
        rows.append({"clip_id": f"c{i}", "video_path": f"clips/c{i}.mp4", "fps": 25.0, "n_frames": frames,
                     "width": size, "height": size, "audio_sr": 16000, "duration_s": frames / 25, "source": "test",
                     "start_s": 0.0, "end_s": frames / 25, "tier": "A"})  # fmt: skip
    return pd.DataFrame(rows)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set size from /proc")
def test_memory_stays_flat_from_20_to_400_clips(tmp_path):
    """Drawing windows from 400 clips holds what drawing from 20 does: the LRU of decoded clips (here
    0.5 MB, a clip being 0.3 MB at 64 px) — not the manifest's hours. The 400 rows reuse 20 files
    (cheap to write; the dataset decodes each row on its own). Before streaming the 400 clips were
    decoded whole at start (~125 MB); with an unbounded LRU the 60 windows drawn here hold ~19 MB."""
    config = dataclasses.replace(TINY, sample_size=64)
    rows = write_clips(tmp_path, 20)
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    write_manifest(rows, small, "test")
    many = pd.concat([rows.assign(clip_id=rows["clip_id"] + f"-{copy}") for copy in range(20)], ignore_index=True)
    write_manifest(many, large, "test")
    growth = {}
    for name, path in (("small", small), ("large", large)):
        dataset = WindowDataset(path, config, memory_mb=0.5)
        take(window_batches(dataset, WindowSampler(len(dataset), seed=1), batch_size=4), 2)  # warm up decoders
        before = rss_bytes()
        for batch in take(window_batches(dataset, WindowSampler(len(dataset), seed=0), batch_size=4), 15):
            assert batch["frames"].shape == (4, config.frames_per_clip, 3, 64, 64)
        growth[name] = rss_bytes() - before
        assert 0 < dataset.memory_bytes <= 0.5 * 2**20
    assert len(dataset) == 400
    assert growth["large"] < growth["small"] + 8 * 2**20, growth


def test_latent_cache_round_trips_and_is_refused_when_the_manifest_changes(manifest, tmp_path):
    torch.manual_seed(0)
    model = FadaModel.from_config(TINY_VAE).eval()
    dataset = WindowDataset(manifest, TINY_VAE)
    key = cache_key(manifest, TINY_VAE, model.vae)
    cache = open_cache(tmp_path / "cache", key, create=True)
    assert fill_cache(cache, dataset, model.encode_images, torch.device("cpu"), quiet=True) == len(dataset)
    assert fill_cache(cache, dataset, model.encode_images, torch.device("cpu"), quiet=True) == 0  # written once
    # the stored tensors are the clip's latents and audio features
    decoded, stored = dataset.decode(0), cache.clip(dataset.clip_ids[0])
    latents = model.encode_images(decoded.frames.permute(0, 3, 1, 2).float() / 127.5 - 1)  # (T, 4, 16, 16)
    assert stored.frames[0 : stored.n_frames].shape == latents.shape == (decoded.n_frames, 4, 16, 16)
    assert torch.equal(stored.frames[0 : stored.n_frames], latents.to(torch.bfloat16))  # bf16 unless asked for fp32
    assert torch.equal(stored.audio_features[0 : stored.n_frames], decoded.audio_features)

    # windows from the cache: latents of the same windows; the loss reads them instead of encoding
    keys = WindowSampler(len(dataset), seed=2).take(3)
    frames_batch = dataset.batch(keys)
    cached = WindowDataset(manifest, TINY_VAE, cache=cache)
    latent_batch = cached.batch(keys)
    assert set(latent_batch) == {"latents", "reference_latent", "motion_latents", "audio_features"}
    encoded_batch = batch_latents(model.encode_images, frames_batch, dtype=torch.bfloat16)
    for cached_latents, encoded in zip(list(latent_batch.values())[:3], encoded_batch, strict=True):
        assert cached_latents.dtype == encoded.dtype == torch.bfloat16  # one precision, cached or encoded
        torch.testing.assert_close(cached_latents, encoded, rtol=1e-2, atol=1e-3)  # batching: ≤ 1 bf16 ulp apart
    assert torch.equal(latent_batch["audio_features"], frames_batch["audio_features"])

    def no_encoding(images):
        raise AssertionError("cached latents must not be encoded again")

    assert batch_latents(no_encoding, latent_batch)[0] is latent_batch["latents"]
    alphas = sd15_alphas_cumprod(torch.float32)
    losses = [
        teacher_loss(model, batch, alphas, torch.Generator().manual_seed(0), TeacherTrainConfig())
        for batch in (frames_batch, latent_batch)
    ]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-6)
    fp32 = TeacherTrainConfig(latent_precision="fp32")
    loss_fp32 = teacher_loss(model, frames_batch, alphas, torch.Generator().manual_seed(0), fp32)
    assert not torch.equal(loss_fp32, losses[0])  # the precision reaches the loss: it is not rounded away
    with pytest.raises(InputFileError, match="another `latent_precision`"):  # a bf16 cache is no fp32 cache
        open_cache(tmp_path / "cache", cache_key(manifest, TINY_VAE, model.vae, torch.float32), create=True)

    # a changed manifest, or another VAE, is refused with a one-line message naming what changed
    df = read_manifest(manifest)
    changed = tmp_path / "changed.parquet"
    write_manifest(df.iloc[:2], changed, "test")
    with pytest.raises(InputFileError, match="the manifest changed: manifest_hash differ"):
        open_cache(tmp_path / "cache", cache_key(changed, TINY_VAE, model.vae), create=True)
    bf16_copy = FadaModel.from_config(TINY_VAE).vae
    bf16_copy.load_state_dict(model.vae.state_dict())
    assert cache_key(manifest, TINY_VAE, bf16_copy.to(torch.bfloat16)) == key  # the same VAE in bf16 shares it
    with torch.no_grad():
        next(model.vae.parameters()).add_(1.0)
    with pytest.raises(InputFileError, match="vae_hash"):
        open_cache(tmp_path / "cache", cache_key(manifest, TINY_VAE, model.vae), create=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a cache")
    with pytest.raises(InputFileError, match=f"without {CACHE_FILE}"):
        open_cache(tmp_path / "other", key, create=True)
