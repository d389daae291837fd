"""Audio features per video frame and their projection to audio tokens (SPEC §3, "Audio").

16 kHz mono speech at 25 fps gives 640 samples per video frame. An encoder turns a clip's waveform
into one feature vector per video frame, `frame_audio_features` stacks the ±`audio_window` frames
around each frame into a window (T, W, D_feat), and `AudioProjection` (a model component) maps each
window to N tokens of the cross-attention width. Features are computed once per clip, never per
denoising step.

Encoders: `mel` — log-mel, no weights, deterministic (4 frames of hop 160 per video frame, so
D_feat = 4·n_mels); `wav2vec2` — a transformers `Wav2Vec2Model` read from a local folder, its last
hidden states (50 Hz) linearly resampled to 25 fps (D_feat = hidden_size).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from pipelines.errors import InputFileError, UsageError
from pipelines.model_config import MEL_SUBFRAMES, ModelConfig

AUDIO_SR = 16_000  # samples per second (SPEC §2)
VIDEO_FPS = 25  # video frames per second (SPEC §2)
SAMPLES_PER_FRAME = AUDIO_SR // VIDEO_FPS  # 640
MEL_HOP = SAMPLES_PER_FRAME // MEL_SUBFRAMES  # 160 samples = 10 ms
MEL_N_FFT = 512  # STFT size (32 ms); a 400-sample Hann window (25 ms) inside it
MEL_WIN = 400


class MelEncoder:
    """Log-mel features (HTK mel scale, 0–8 kHz), `MEL_SUBFRAMES` STFT frames per video frame."""

    def __init__(self, n_mels: int, window: int = 2):
        self.n_mels = n_mels
        self.window = window  # ±frames stacked around each video frame by `frame_audio_features`
        self.feature_dim = MEL_SUBFRAMES * n_mels
        self.filters = torch.from_numpy(mel_filterbank(n_mels, MEL_N_FFT, AUDIO_SR))  # (n_mels, n_fft/2+1)

    @torch.no_grad()
    def frame_features(self, waveform: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(S,) float waveform → (n_frames, D_feat) log10-mel, 4 sub-frames concatenated per frame."""
        wav = _fit_length(waveform.float().cpu(), n_frames * SAMPLES_PER_FRAME)
        window = torch.hann_window(MEL_WIN)
        spec = torch.stft(
            wav, MEL_N_FFT, MEL_HOP, MEL_WIN, window, center=True, pad_mode="constant", return_complex=True
        )
        power = spec.abs().pow(2)[:, : n_frames * MEL_SUBFRAMES]  # (n_fft/2+1, 4·T)
        mel = torch.log10(self.filters @ power + 1e-5)  # (n_mels, 4·T), silence = -5
        return mel.T.reshape(n_frames, self.feature_dim)  # (T, 4·n_mels)


class Wav2Vec2Encoder:
    """Last hidden states of a local transformers `Wav2Vec2Model`, resampled to 25 fps."""

    def __init__(self, path: str | Path, window: int = 2):
        from transformers import Wav2Vec2Model

        self.window = window  # ±frames stacked around each video frame by `frame_audio_features`
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise InputFileError(
                f"wav2vec2 folder {str(folder)!r} has no config.json; pass a local folder saved with "
                "save_pretrained (e.g. facebook/wav2vec2-base-960h downloaded beforehand)."
            )
        self.model = Wav2Vec2Model.from_pretrained(folder, local_files_only=True).eval()
        self.feature_dim = self.model.config.hidden_size

    @torch.no_grad()
    def frame_features(self, waveform: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(S,) waveform → (n_frames, hidden_size); input normalised to zero mean, unit variance."""
        param = next(self.model.parameters())
        wav = _fit_length(waveform.float().cpu(), n_frames * SAMPLES_PER_FRAME)
        wav = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)  # Wav2Vec2FeatureExtractor
        hidden = self.model(wav[None].to(param.device, param.dtype)).last_hidden_state  # (1, ~2T, D)
        hidden = F.interpolate(hidden.transpose(1, 2).float(), size=n_frames, mode="linear", align_corners=False)
        return hidden[0].T.cpu()  # (T, D)


AudioEncoder = MelEncoder | Wav2Vec2Encoder


def build_audio_encoder(config: ModelConfig) -> AudioEncoder:
    """The encoder named by `config.audio_encoder`, checked against `config.audio_feature_dim`."""
    if config.audio_encoder == "mel":
        return MelEncoder(config.n_mels, config.audio_window)
    if config.audio_encoder_path is None:
        raise UsageError("audio_encoder='wav2vec2' needs a local folder; pass --audio-encoder-path PATH.")
    encoder = Wav2Vec2Encoder(config.audio_encoder_path, config.audio_window)
    if encoder.feature_dim != config.audio_feature_dim:
        raise UsageError(
            f"wav2vec2 at {config.audio_encoder_path!r} gives {encoder.feature_dim}-d features but the model expects "
            f"audio_feature_dim={config.audio_feature_dim}; use the encoder the model was trained with."
        )
    return encoder


def with_audio_encoder(config: ModelConfig, name: str, path: str | Path | None = None) -> ModelConfig:
    """`config` switched to encoder `name` ('mel' | 'wav2vec2'), with audio_feature_dim set to match."""
    if name == "mel":
        return dataclasses.replace(config, audio_encoder="mel", audio_encoder_path=None)
    if name != "wav2vec2":
        raise UsageError(f"unknown audio encoder {name!r}; use mel or wav2vec2.")
    if path is None or not (Path(path) / "config.json").is_file():
        raise InputFileError(f"wav2vec2 folder {str(path)!r} has no config.json; pass a local wav2vec2 folder.")
    hidden = json.loads((Path(path) / "config.json").read_text())["hidden_size"]
    return dataclasses.replace(
        config, audio_encoder="wav2vec2", audio_encoder_path=str(path), audio_feature_dim=int(hidden)
    )


def frame_audio_features(waveform, n_frames: int, encoder: AudioEncoder | ModelConfig) -> torch.Tensor:
    """Windowed per-frame features: (S,) waveform at 16 kHz → (n_frames, W = 2·window+1, D_feat).

    Frame i covers samples [640·i, 640·(i+1)); audio shorter than the video is padded with silence.
    The window around frame i holds frames i−w … i+w (w = `encoder.window`), repeating the first/last frame at
    the ends of the clip (edge padding). `encoder` may be a `ModelConfig`, from which the encoder is
    built (`build_audio_encoder`); build it once yourself when featurising many clips.
    """
    if isinstance(encoder, ModelConfig):
        encoder = build_audio_encoder(encoder)
    if n_frames < 1:
        raise UsageError(f"n_frames={n_frames}: need at least one video frame of audio.")
    waveform = torch.as_tensor(np.asarray(waveform, dtype=np.float32)) if not torch.is_tensor(waveform) else waveform
    if waveform.ndim != 1:
        raise UsageError(f"audio waveform has shape {tuple(waveform.shape)}; pass 16 kHz mono as a 1-D array.")
    feats = encoder.frame_features(waveform, n_frames)  # (T, D)
    index = torch.arange(n_frames)[:, None] + torch.arange(-encoder.window, encoder.window + 1)[None, :]  # (T, W)
    return feats[index.clamp(0, n_frames - 1)]  # (T, W, D)


class AudioProjection(ModelMixin, ConfigMixin):
    """Learned map from a window of audio features to N audio tokens, plus the learned null audio.

    (B, F, W, D_feat) → (B, F, N, D_cross). `null_tokens` (N, D_cross) replace the tokens of a sample
    whose audio is dropped (SPEC §3: "a dropped condition becomes a learned null (audio)").
    """

    @register_to_config
    def __init__(self, feature_dim: int, window: int = 5, hidden_dim: int = 1024, n_tokens: int = 32, dim: int = 768):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(window * feature_dim, hidden_dim),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden_dim, n_tokens * dim),
        )
        self.norm = torch.nn.LayerNorm(dim)
        self.null_tokens = torch.nn.Parameter(torch.randn(n_tokens, dim) / math.sqrt(dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, f, w, d = features.shape
        tokens = self.mlp(features.reshape(b, f, w * d))  # (B, F, N·D)
        return self.norm(tokens.view(b, f, self.config.n_tokens, self.config.dim))  # (B, F, N, D)


def mel_filterbank(n_mels: int, n_fft: int, sr: int) -> np.ndarray:
    """Triangular filters evenly spaced on the HTK mel scale from 0 Hz to sr/2 → (n_mels, n_fft//2+1)."""
    mel_max = 2595.0 * np.log10(1.0 + (sr / 2) / 700.0)
    hz = 700.0 * (10.0 ** (np.linspace(0.0, mel_max, n_mels + 2) / 2595.0) - 1.0)  # n_mels+2 edges
    bins = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None] - lower) / (center - lower)
    falling = (upper - bins[None]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Truncate or zero-pad (silence) a 1-D waveform to `length` samples."""
    return wav[:length] if wav.shape[0] >= length else F.pad(wav, (0, length - wav.shape[0]))
