"""Audio features from a window of the speech equal the whole file's (mel exactly, wav2vec2 within tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_tiny_wav2vec2

from pipelines.audio import (
    MelEncoder,
    Wav2Vec2Encoder,
    frame_audio_features,
    frame_audio_features_window,
)
from pipelines.errors import UsageError

N_FRAMES = 90  # 3.6 s of video; the speech below is shorter, so the last frames are silence


def _speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * 16_000)) / 16_000
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (voice + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.mark.parametrize("frames_per_clip", [1, 4, 16])
def test_mel_windows_equal_the_whole_file_exactly(frames_per_clip):
    speech, encoder = _speech(3.3), MelEncoder(n_mels=8, window=2)
    whole = frame_audio_features(speech, N_FRAMES, encoder)  # (T, 5, 32)
    for start in range(0, N_FRAMES, frames_per_clip):
        stop = min(start + frames_per_clip, N_FRAMES)
        assert torch.equal(frame_audio_features_window(speech, N_FRAMES, encoder, start, stop), whole[start:stop])


def test_window_outside_the_audio_is_an_error():
    with pytest.raises(UsageError, match=r"frames \[8, 12\) are not inside the 10 frames"):
        frame_audio_features_window(_speech(0.4), 10, MelEncoder(n_mels=8), 8, 12)


@pytest.fixture(scope="module", params=["group", "layer"])
def wav2vec2(request, tmp_path_factory):
    """A tiny random `Wav2Vec2Model` in a local folder: group-norm (as wav2vec2-base) or layer-norm extractor."""
    folder = save_tiny_wav2vec2(
        tmp_path_factory.mktemp("w2v") / "w2v",
        feat_extract_norm=request.param,
        do_stable_layer_norm=request.param == "layer",
    )
    return Wav2Vec2Encoder(folder, window=2)


def _max_window_error(speech, encoder, frames_per_clip: int = 8) -> float:
    whole = frame_audio_features(speech, N_FRAMES, encoder)
    errors = [
        (frame_audio_features_window(speech, N_FRAMES, encoder, start, start + frames_per_clip) - whole[start:stop])
        .abs()
        .max()
        .item()
        for start in range(0, N_FRAMES - frames_per_clip + 1, frames_per_clip)
        for stop in [start + frames_per_clip]
    ]
    return max(errors)


def test_wav2vec2_windows_match_the_whole_file_within_tolerance(wav2vec2):
    speech = _speech(3.3)
    wav2vec2.context_frames = N_FRAMES  # the context reaches the whole file: only float rounding is left
    assert _max_window_error(speech, wav2vec2) <= 1e-4  # whole-file statistics and resampling positions
    wav2vec2.context_frames = 25  # 1 s each side: only self-attention misses the rest of the file
    feature_std = frame_audio_features(speech, N_FRAMES, wav2vec2).std().item()
    error = _max_window_error(speech, wav2vec2)
    assert 1e-5 < error <= 0.01 * feature_std  # the documented tolerance (docs/ARCHITECTURE.md); measured ≈ 0.002
