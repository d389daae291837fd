"""Audio features per video frame and their projection to audio tokens (DESIGN §3, "Audio").

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

AUDIO_SR = 16_000  # samples per second (DESIGN §2)
VIDEO_FPS = 25  # video frames per second (DESIGN §2)
SAMPLES_PER_FRAME = AUDIO_SR // VIDEO_FPS  # 640
MEL_HOP = SAMPLES_PER_FRAME // MEL_SUBFRAMES  # 160 samples = 10 ms
MEL_N_FFT = 512  # STFT size (32 ms); a 400-sample Hann window (25 ms) inside it
MEL_WIN = 400
WAV2VEC2_CONTEXT_FRAMES = 50  # video frames (2 s) of audio each side of a wav2vec2 window


class MelEncoder:
    """Log-mel features (HTK mel scale, 0–8 kHz), `MEL_SUBFRAMES` STFT frames per video frame."""

    def __init__(self, n_mels: int, window: int = 2):
        self.n_mels = n_mels
        self.window = window  # ±frames stacked around each video frame by `frame_audio_features`
        self.feature_dim = MEL_SUBFRAMES * n_mels
        self.filters = torch.from_numpy(mel_filterbank(n_mels, MEL_N_FFT, AUDIO_SR))  # (n_mels, n_fft/2+1)

    def to(self, device: torch.device | str) -> MelEncoder:
        """Nothing to move: `frame_features_window` takes its device per call."""
        return self

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

    def file_statistics(self, waveform: torch.Tensor, n_frames: int) -> None:
        """Nothing: a mel frame depends on its own samples only."""
        return None

    @torch.no_grad()
    def frame_features_window(
        self,
        waveform: torch.Tensor,
        n_frames: int,
        start: int,
        stop: int,
        device: torch.device | str = "cpu",
        statistics: None = None,
    ) -> torch.Tensor:
        """`frame_features(waveform, n_frames)[start:stop]` exactly, from frames start−1 … stop of audio.

        An STFT frame reads n_fft/2 = 256 samples either side of its centre, less than the one video
        frame (640 samples) of context taken on each side, and the out-of-file context is the same
        silence the whole-file STFT pads with, so every kept frame sees the same samples.
        """
        context = 1  # video frames of audio each side; 640 ≥ MEL_N_FFT // 2
        wav = _padded_slice(waveform, n_frames * SAMPLES_PER_FRAME, start - context, stop + context).to(device)
        window = torch.hann_window(MEL_WIN, device=wav.device)
        spec = torch.stft(
            wav, MEL_N_FFT, MEL_HOP, MEL_WIN, window, center=True, pad_mode="constant", return_complex=True
        )
        keep = slice(context * MEL_SUBFRAMES, (context + stop - start) * MEL_SUBFRAMES)
        power = spec.abs().pow(2)[:, keep]  # (n_fft/2+1, 4·(stop−start))
        mel = torch.log10(self.filters.to(wav.device) @ power + 1e-5)  # (n_mels, 4·(stop−start))
        return mel.T.reshape(stop - start, self.feature_dim)  # (stop−start, 4·n_mels)


class Wav2Vec2Encoder:
    """Last hidden states of a local transformers `Wav2Vec2Model`, resampled to 25 fps."""

    def __init__(self, path: str | Path, window: int = 2, context_frames: int = WAV2VEC2_CONTEXT_FRAMES):
        from transformers import Wav2Vec2Model

        self.window = window  # ±frames stacked around each video frame by `frame_audio_features`
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise InputFileError(
                f"wav2vec2 folder {str(folder)!r} has no config.json; pass a local folder saved with "
                "save_pretrained (e.g. facebook/wav2vec2-base-960h downloaded beforehand)."
            )
        self.model = Wav2Vec2Model.from_pretrained(folder, local_files_only=True).eval()
        self.context_frames = context_frames  # video frames of audio each side in `frame_features_window`
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

    def to(self, device: torch.device | str) -> Wav2Vec2Encoder:
        """Move the wav2vec2 weights to ``device`` (where `frame_features_window` then runs)."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def file_statistics(self, waveform: torch.Tensor, n_frames: int) -> dict[str, torch.Tensor]:
        """What `frame_features` normalises with over the whole file, computed in O(chunk) memory.

        The input's mean and std (Wav2Vec2FeatureExtractor), and — for a group-norm feature extractor
        (wav2vec2-base) — the per-channel mean and variance of the first conv layer's output over
        time, which its GroupNorm(C groups) takes over the whole file.
        """
        param = next(self.model.parameters())
        wav = _fit_length(waveform.float().cpu(), n_frames * SAMPLES_PER_FRAME)
        stats = {"mean": wav.mean(), "std": torch.sqrt(wav.var(unbiased=False) + 1e-7)}
        first = self.model.feature_extractor.conv_layers[0]
        if isinstance(getattr(first, "layer_norm", None), torch.nn.GroupNorm):
            kernel, stride = first.conv.kernel_size[0], first.conv.stride[0]
            outputs = (len(wav) - kernel) // stride + 1  # conv output j reads samples [stride·j, stride·j + kernel)
            total = torch.zeros(2, first.conv.out_channels, dtype=torch.float64, device=param.device)
            step = 16_000  # conv outputs per chunk (5 s of audio)
            for j in range(0, outputs, step):
                k = min(j + step, outputs)
                piece = (wav[stride * j : stride * (k - 1) + kernel] - stats["mean"]) / stats["std"]
                out = first.conv(piece[None, None].to(param.device, param.dtype))[0].double()  # (C, k − j)
                total += torch.stack([out.sum(1), out.pow(2).sum(1)])
            mean = total[0] / outputs
            stats["norm_mean"], stats["norm_var"] = mean, total[1] / outputs - mean**2
        return stats

    @torch.no_grad()
    def frame_features_window(
        self,
        waveform: torch.Tensor,
        n_frames: int,
        start: int,
        stop: int,
        device: torch.device | str | None = None,
        statistics: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """≈ `frame_features(waveform, n_frames)[start:stop]`, from ±`context_frames` frames of audio.

        Runs where the weights are (see `to`; ``device`` is unused). Everything that `frame_features`
        computes over the whole file is taken from the whole file (`file_statistics`): the input
        normalisation, a group-norm feature extractor's per-channel statistics, and the positions at
        which the 50 Hz hidden states are resampled to 25 fps. What is left is the transformer's
        self-attention (and positional convolution) not seeing beyond the context; the bound is
        measured in `tests/test_audio_windows.py` and documented in docs/ARCHITECTURE.md.
        """
        stats = self.file_statistics(waveform, n_frames) if statistics is None else statistics
        param = next(self.model.parameters())
        total = n_frames * SAMPLES_PER_FRAME
        first = max(0, start - self.context_frames)  # clipped to the file, as the whole-file pass sees it
        last = min(n_frames, stop + self.context_frames)
        piece = _fit_length(waveform.float().cpu()[first * SAMPLES_PER_FRAME :], (last - first) * SAMPLES_PER_FRAME)
        piece = ((piece - stats["mean"]) / stats["std"])[None, None].to(param.device, param.dtype)  # (1, 1, S)
        layers = self.model.feature_extractor.conv_layers
        if "norm_mean" in stats:  # GroupNorm over the whole file's time axis, from its statistics
            norm = layers[0].layer_norm
            out = layers[0].conv(piece)  # (1, C, L0)
            scale = norm.weight / torch.sqrt(stats["norm_var"].to(out.dtype) + norm.eps)
            out = layers[0].activation(
                (out - stats["norm_mean"].to(out.dtype)[:, None]) * scale[:, None] + norm.bias[:, None]
            )
            layers = layers[1:]
        else:
            out = piece
        for layer in layers:
            out = layer(out)  # (1, C, L)
        hidden, _ = self.model.feature_projection(out.transpose(1, 2))  # (1, L, D)
        hidden = self.model.encoder(hidden).last_hidden_state
        if self.model.adapter is not None:
            hidden = self.model.adapter(hidden)
        hidden = hidden[0].float()  # (L, D), L ≈ 2·(last − first)
        # F.interpolate(mode="linear", align_corners=False) from the whole file's L hidden states to T frames
        length = int(self.model._get_feat_extract_output_lengths(total))
        source = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * (length / n_frames) - 0.5).clamp(min=0)
        lower = source.floor().long()
        upper = torch.where(lower < length - 1, lower + 1, lower)
        weight = (source - lower).float().to(hidden.device)[:, None]  # (stop − start, 1)
        offset = first * SAMPLES_PER_FRAME // 320  # hidden states are 320 samples (20 ms) apart
        lower = (lower - offset).clamp(max=len(hidden) - 1).to(hidden.device)
        upper = (upper - offset).clamp(max=len(hidden) - 1).to(hidden.device)
        return (1 - weight) * hidden[lower] + weight * hidden[upper]  # (stop − start, D)


class HalloWav2Vec2Encoder:
    """Hallo's wav2vec2 features: every hidden layer of a local `Wav2Vec2Model`, at 25 fps before the transformer.

    As Hallo's `AudioProcessor` + `Wav2VecModel`: the waveform is normalised (zero mean, unit variance),
    then whole frames of silence follow its last (partial) frame up to the frames asked for; the
    convolutional features are linearly resampled (``align_corners=True``) to one per video frame
    before the projection and the transformer, and the outputs of its layers 1…L (not the embedding)
    are stacked per frame → (T, L·hidden) — equal to Hallo's to 1.4e-6 (bench/hallo_equivalence.py). Hallo also
    separates the vocals first (an ONNX model); fada takes the speech as given. The whole file is
    encoded at once (`file_statistics`), so windows are exact slices and memory grows with the speech.
    """

    def __init__(self, path: str | Path, window: int = 2):
        from transformers import Wav2Vec2Model

        self.window = window
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise InputFileError(
                f"wav2vec2 folder {str(folder)!r} has no config.json; pass Hallo's wav2vec/wav2vec2-base-960h folder."
            )
        self.model = Wav2Vec2Model.from_pretrained(folder, local_files_only=True).eval()
        self.context_frames = 1  # a stream re-encodes all the audio heard so far for each clip
        self.feature_dim = self.model.config.num_hidden_layers * self.model.config.hidden_size

    def to(self, device: torch.device | str) -> HalloWav2Vec2Encoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def frame_features(self, waveform: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(S,) waveform → (n_frames, L·hidden): the L hidden layers of each frame, concatenated."""
        param = next(self.model.parameters())
        wav = waveform.float().cpu()[: n_frames * SAMPLES_PER_FRAME]
        wav = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)  # Wav2Vec2FeatureExtractor
        # Hallo pads whole frames of silence after the speech's last (partial) frame, up to n_frames
        heard = math.ceil(len(wav) / SAMPLES_PER_FRAME)
        wav = F.pad(wav, (0, (n_frames - heard) * SAMPLES_PER_FRAME))[None].to(param.device, param.dtype)
        extracted = self.model.feature_extractor(wav)  # (1, C, L)
        extracted = F.interpolate(extracted.float(), size=n_frames, mode="linear", align_corners=True)
        hidden, _ = self.model.feature_projection(extracted.transpose(1, 2).to(param.dtype))  # (1, T, D)
        # the outputs of layers 1…L (transformers' hidden_states[1:]), read with forward hooks: recent transformers
        # record them only at the model level; the last is the encoder's output (after its final norm, if any)
        outputs: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
            for layer in self.model.encoder.layers
        ]
        try:
            last = self.model.encoder(hidden).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        layers = [*outputs[:-1], last]  # L × (1, T, D)
        return torch.cat([h[0].float() for h in layers], dim=-1).cpu()  # (T, L·D)

    def file_statistics(self, waveform: torch.Tensor, n_frames: int) -> dict[str, torch.Tensor]:
        """The whole file's features (Hallo encodes the whole speech at once)."""
        return {"features": self.frame_features(waveform, n_frames)}

    def frame_features_window(self, waveform, n_frames, start, stop, device=None, statistics=None) -> torch.Tensor:
        """`frame_features(waveform, n_frames)[start:stop]` exactly."""
        stats = self.file_statistics(waveform, n_frames) if statistics is None else statistics
        return stats["features"][start:stop]


AudioEncoder = MelEncoder | Wav2Vec2Encoder | HalloWav2Vec2Encoder


def build_audio_encoder(config: ModelConfig) -> AudioEncoder:
    """The encoder named by `config.audio_encoder`, checked against `config.audio_feature_dim`."""
    if config.audio_encoder == "mel":
        return MelEncoder(config.n_mels, config.audio_window)
    if config.audio_encoder_path is None:
        raise UsageError(
            f"`audio_encoder` {config.audio_encoder!r} needs a local folder; pass `audio_encoder_path` PATH."
        )
    if config.audio_encoder == "hallo-wav2vec2":
        encoder = HalloWav2Vec2Encoder(config.audio_encoder_path, config.audio_window)
    else:
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


class AudioFeatureWindows:
    """`frame_audio_features` of one speech, clip by clip: ``windows(start, stop)`` → (stop−start, W, D_feat).

    Only the audio of the frames asked for (their ±`encoder.window` neighbours, plus the encoder's
    own context) is featurised, on ``device``, so memory does not grow with the speech's length;
    what the encoder normalises over the whole file is computed once, in chunks (`file_statistics`).
    ``windows(a, b)`` equals ``frame_audio_features(waveform, n_frames, encoder)[a:b]`` exactly for
    the mel encoder and within the tolerance of docs/ARCHITECTURE.md for wav2vec2.
    """

    def __init__(self, waveform, n_frames: int, encoder: AudioEncoder, device: torch.device | str = "cpu"):
        if n_frames < 1:
            raise UsageError(f"n_frames={n_frames}: need at least one video frame of audio.")
        waveform = (
            torch.as_tensor(np.asarray(waveform, dtype=np.float32)) if not torch.is_tensor(waveform) else waveform
        )
        if waveform.ndim != 1:
            raise UsageError(f"audio waveform has shape {tuple(waveform.shape)}; pass 16 kHz mono as a 1-D array.")
        self.waveform, self.n_frames, self.encoder, self.device = waveform, n_frames, encoder, device
        self.statistics = encoder.file_statistics(waveform, n_frames)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start < stop <= self.n_frames:
            raise UsageError(f"frames [{start}, {stop}) are not inside the {self.n_frames} frames of the audio.")
        w = self.encoder.window
        first, last = max(0, start - w), min(self.n_frames, stop + w)
        feats = self.encoder.frame_features_window(  # (last − first, D)
            self.waveform, self.n_frames, first, last, self.device, self.statistics
        )
        index = torch.arange(start, stop)[:, None] + torch.arange(-w, w + 1)[None, :]  # (stop − start, W)
        return feats[(index.clamp(0, self.n_frames - 1) - first).to(feats.device)]  # (stop − start, W, D)


def frame_audio_features_window(
    waveform, n_frames: int, encoder: AudioEncoder, start: int, stop: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Frames [start, stop) of `frame_audio_features`, from a window of the audio (`AudioFeatureWindows`)."""
    return AudioFeatureWindows(waveform, n_frames, encoder, device)(start, stop)


class AudioProjection(ModelMixin, ConfigMixin):
    """Learned map from a window of audio features to N audio tokens, plus the learned null audio.

    (B, F, W, D_feat) → (B, F, N, D_cross). `null_tokens` (N, D_cross) replace the tokens of a sample
    whose audio is dropped (DESIGN §3: "a dropped condition becomes a learned null (audio)").
    """

    @register_to_config
    def __init__(self, feature_dim: int, window: int = 5, hidden_dim: int = 1024, n_tokens: int = 32, dim: int = 768,
                 time_embed_dim: int | None = None):  # fmt: skip
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(window * feature_dim, hidden_dim),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden_dim, n_tokens * dim),
        )
        self.norm = torch.nn.LayerNorm(dim)
        self.null_tokens = torch.nn.Parameter(torch.randn(n_tokens, dim) / math.sqrt(dim))
        self.time_projection = None  # `ModelConfig.audio_time_embedding`: tokens → a timestep-embedding shift
        if time_embed_dim is not None:
            self.time_projection = torch.nn.Linear(dim, time_embed_dim)
            torch.nn.init.zeros_(self.time_projection.weight)  # starts as no shift at all
            torch.nn.init.zeros_(self.time_projection.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, f, w, d = features.shape
        tokens = self.mlp(features.reshape(b, f, w * d))  # (B, F, N·D)
        return self.norm(tokens.view(b, f, self.config.n_tokens, self.config.dim))  # (B, F, N, D)

    def time_shift(self, tokens: torch.Tensor) -> torch.Tensor:
        """Audio tokens (..., N, D) (the null tokens where dropped) → their shift of the timestep embedding
        (..., D_time): the tokens' mean through one zero-initialised linear layer."""
        return self.time_projection(tokens.mean(dim=-2))


def mel_filterbank(n_mels: int, n_fft: int, sr: int) -> np.ndarray:
    """Triangular filters evenly spaced on the HTK mel scale from 0 Hz to sr/2 → (n_mels, n_fft//2+1)."""
    mel_max = 2595.0 * np.log10(1.0 + (sr / 2) / 700.0)
    hz = 700.0 * (10.0 ** (np.linspace(0.0, mel_max, n_mels + 2) / 2595.0) - 1.0)  # n_mels+2 edges
    bins = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None] - lower) / (center - lower)
    falling = (upper - bins[None]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _padded_slice(waveform: torch.Tensor, length: int, first_frame: int, last_frame: int) -> torch.Tensor:
    """Samples of video frames [first_frame, last_frame) of `_fit_length(waveform, length)`, silence outside it."""
    lo, hi = first_frame * SAMPLES_PER_FRAME, last_frame * SAMPLES_PER_FRAME
    inside = waveform[max(lo, 0) : max(min(hi, length, waveform.shape[0]), max(lo, 0))].float()
    before = max(0, -lo)
    return F.pad(inside, (before, hi - lo - before - inside.shape[0]))


def _fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Truncate or zero-pad (silence) a 1-D waveform to `length` samples."""
    return wav[:length] if wav.shape[0] >= length else F.pad(wav, (0, length - wav.shape[0]))
