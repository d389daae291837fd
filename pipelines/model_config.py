"""The model configuration shared by the teacher and the student (DESIGN §3) and its named presets.

A `ModelConfig` is everything needed to rebuild a `FadaModel`'s modules; checkpoints store it with
`to_dict()` and read it back with `from_dict()`. The teacher and the student differ only in
`cfg_conditioning` (DESIGN §4, "CFG inside distillation").

Presets:
- `tiny`: tests; 32×32 pixel space, two UNet levels of (16, 32) channels with attention at the
  16×16 level and the mid block, F=4, M=2. Well under a second per forward on one CPU core.
- `demo`: the CPU end-to-end demo; 64×64 pixel space (a face crop at 64 px still shows a mouth of
  ~10 px that opens and closes), three levels (16, 32, 64) with attention (reference, audio,
  temporal) only at the 16×16 level and the mid block: attention at 32×32 made a CPU forward 2.5×
  slower (it is quadratic in tokens and the reference adds (1+M)× keys); F=8, M=2. Two departures
  from the paper, which its short CPU runs need (`bench/results/teacher_recipe.md`): the denoising
  net predicts the residual from the reference (``reference_residual``: the portrait in its own
  colours from the first step), and the audio also shifts the timestep embedding
  (``audio_time_embedding``: the mouth follows the speech within minutes).
- `sd15`: the paper's scale; 512² images as SD1.5 VAE latents (4×64×64), SD1.5 UNet sizes,
  cross-attention width 768, F=16, M=4.
- `hallo`: the `hallo` family at Hallo/Hallo2's released sizes (docs/DESIGN.md §3c): SD1.5 UNets, F=16,
  M=2, 12-layer wav2vec2 windows → 32 tokens, 4 identity tokens from InsightFace, v-prediction on
  the linear zero-SNR schedule with trailing DDIM. `fada import hallo` fills it from `net.pth`.
- `hallo-tiny`: the same structure at test size (64² images through a 4-level VAE, channels that
  are multiples of 32 as Hallo's motion modules' GroupNorm needs, mel audio, no identity encoder).

New fields default to fada's own behaviour, so configs saved before they existed keep their meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import UsageError

LATENT_CODECS = ("none", "vae")
AUDIO_ENCODERS = ("mel", "wav2vec2", "hallo-wav2vec2")
FAMILIES = ("fada", "hallo")
IDENTITY_ENCODERS = ("none", "insightface")
BETA_SCHEDULES = ("scaled_linear", "linear")
TIMESTEP_SPACINGS = ("leading", "trailing")
HALLO_DOWN_BLOCKS = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)  # Hallo's UNet3D hard-codes these
HALLO_UP_BLOCKS = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
CFG_CONDITIONINGS = ("none", "tokens", "layer", "time-embed")
PREDICTION_TYPES = ("epsilon", "v_prediction", "reference_residual")  # what the denoising net's output means
MEL_SUBFRAMES = 4  # log-mel frames per video frame (hop 160 samples = 10 ms at 16 kHz, 40 ms per frame)


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"  # name of the preset this config started from (informational)
    # --- images and latents ---
    sample_size: int = 32  # side in pixels of the square face crops the model generates
    latent_codec: str = "none"  # 'none': pixel space, images in [-1, 1] are the latents; 'vae': AutoencoderKL
    latent_channels: int = 3  # C of the latents (3 in pixel space, 4 for the SD1.5 VAE)
    vae_scaling_factor: float = 0.18215  # latents = vae.encode(x).mean * factor (SD1.5 value)
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # VAE levels; 2^(n-1) = downsampling factor
    vae_layers_per_block: int = 2  # resnets per VAE level
    vae_norm_num_groups: int = 32  # GroupNorm groups inside the VAE
    # --- the two UNets (reference net and denoising net have the same shape) ---
    block_out_channels: tuple[int, ...] = (16, 32)  # channels per UNet level
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D")  # diffusers block names
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D")  # mirror of down_block_types
    layers_per_block: int = 1  # resnets (and transformers) per level
    norm_num_groups: int = 4  # GroupNorm groups in the UNets and the temporal layers
    attention_head_dim: int = 2  # diffusers' (mis)named field: number of heads of the spatial attention (SD1.5: 8)
    cross_attention_dim: int = 32  # width of the audio tokens and CFG tokens (SD1.5: 768)
    # --- temporal attention across the F frames ---
    temporal_heads: int = 2  # heads of each temporal transformer
    temporal_max_frames: int = 32  # length of the sinusoidal frame-position table (must be >= frames_per_clip)
    # --- clip structure ---
    frames_per_clip: int = 4  # F: frames denoised together in one clip
    motion_frames: int = 2  # M: last frames of the previous clip fed to the reference net
    # --- audio ---
    audio_encoder: str = "mel"  # 'mel' (log-mel, no weights) or 'wav2vec2' (local folder)
    audio_encoder_path: str | None = None  # local wav2vec2 folder (required for 'wav2vec2')
    n_mels: int = 16  # mel bands of the 'mel' encoder
    audio_feature_dim: int = 64  # D_feat per frame: 4·n_mels for 'mel', hidden_size for 'wav2vec2'
    audio_window: int = 2  # frames each side of a video frame whose features it sees (W = 2·window + 1)
    audio_tokens: int = 4  # N: audio tokens per video frame
    audio_hidden_dim: int = 64  # width of the hidden layer of the audio projection MLP
    # --- reference conditioning (DESIGN §3c); the paper's path is reference attention alone ---
    prediction_type: str = "epsilon"  # 'epsilon': the net predicts ε (the paper); 'v_prediction': v (Hallo;
    # see the noise schedule below); 'reference_residual': it predicts x0 − reference latent, from which
    # `FadaModel.denoise` derives ε; the reference is the skip of every CFG branch, so an untrained net (zero
    # conv_out) returns the portrait and reference CFG scales only what the reference attention adds (a
    # departure from the paper, demo preset only)
    reference_concat: bool = False  # concatenate the reference latent to each frame's noisy input channels
    # (image-to-video style; conv_in's reference half starts at zero; zeros where the reference is dropped)
    audio_time_embedding: bool = False  # also add the audio tokens (mean, through a zero-initialised linear
    # layer) to each frame's timestep embedding, as Diffused Heads does: a per-frame signal every resnet of the
    # denoising net sees at every resolution, beside the audio cross-attention (demo preset only)
    # --- student CFG conditioning (DESIGN §3, §4; Eq. 10) ---
    cfg_conditioning: str = "none"  # 'none' (teacher) | 'tokens' (Eq. 10) | 'layer' (no tokens) | 'time-embed'
    cfg_tokens: int = 4  # number of tokens in each of γ_a, γ_r, γ_b (and in the 'layer' scale embedding)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into checkpoints
    # --- noise schedule and what the network predicts (docs/DESIGN.md §4; defaults: SD1.5) ---
    # (`prediction_type` above: `FadaModel.denoise` returns ε for each of its values)
    beta_schedule: str = "scaled_linear"  # 'scaled_linear' (SD1.5) | 'linear' (Hallo's sampler)
    zero_terminal_snr: bool = False  # rescale β so that ᾱ_999 = 0 (Lin et al. 2024; Hallo)
    timestep_spacing: str = "leading"  # DDIM spacing: 'leading' + steps_offset 1 (SD1.5) | 'trailing' (Hallo)
    set_alpha_to_one: bool = False  # ᾱ after the last DDIM step: ᾱ_0 (False, SD1.5) or 1 (Hallo)
    # --- model family (docs/DESIGN.md §3c): 'hallo' adds the modules below; 'fada' ignores them ---
    family: str = "fada"  # 'fada' | 'hallo'
    identity_encoder: str = "none"  # hallo: 'insightface' (face embedding) | 'none' (the null identity, zeros)
    face_analysis_path: str | None = None  # hallo: local InsightFace folder (models/*.onnx) for 'insightface'
    identity_embedding_dim: int = 512  # hallo: width of the face embedding (InsightFace ArcFace: 512)
    identity_tokens: int = 4  # hallo: tokens the face embedding is projected to (the UNets' cross-attention)
    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)  # hallo: face-locator conv widths (3 stride-2 convs)
    audio_layers: int = 1  # hidden layers of the audio encoder stacked per frame (hallo-wav2vec2: 12)

    def __post_init__(self) -> None:
        _check_choice("latent_codec", self.latent_codec, LATENT_CODECS)
        _check_choice("audio_encoder", self.audio_encoder, AUDIO_ENCODERS)
        _check_choice("cfg_conditioning", self.cfg_conditioning, CFG_CONDITIONINGS)
        _check_choice("family", self.family, FAMILIES)
        _check_choice("identity_encoder", self.identity_encoder, IDENTITY_ENCODERS)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.family == "hallo":
            _check_hallo(self)
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(
            self.block_out_channels
        ):
            raise UsageError(
                f"block types {self.down_block_types}/{self.up_block_types} do not match "
                f"block_out_channels {self.block_out_channels}; give one type per level."
            )
        if self.frames_per_clip < 1 or self.frames_per_clip > self.temporal_max_frames:
            raise UsageError(
                f"frames_per_clip={self.frames_per_clip} must be in 1..temporal_max_frames={self.temporal_max_frames}; "
                "lower frames_per_clip or raise temporal_max_frames."
            )
        if self.motion_frames < 0:
            raise UsageError(f"motion_frames={self.motion_frames} must be >= 0.")
        if self.sample_size % self.latent_downsample != 0:
            raise UsageError(
                f"sample_size={self.sample_size} is not divisible by the codec's factor {self.latent_downsample}."
            )
        if self.audio_encoder == "mel" and self.audio_feature_dim != MEL_SUBFRAMES * self.n_mels:
            mel_dim = MEL_SUBFRAMES * self.n_mels
            raise UsageError(
                f"audio_feature_dim={self.audio_feature_dim} does not match the mel encoder's "
                f"{MEL_SUBFRAMES}·n_mels={mel_dim}; set audio_feature_dim={mel_dim}."
            )

    @property
    def latent_downsample(self) -> int:
        """Pixel → latent downsampling factor (1 in pixel space, 8 for the SD1.5 VAE)."""
        return 1 if self.latent_codec == "none" else 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Side h = w of the latents."""
        return self.sample_size // self.latent_downsample

    @property
    def denoising_in_channels(self) -> int:
        """Input channels of the denoising net: the noisy latent, plus the reference latent when concatenated."""
        return self.latent_channels * (2 if self.reference_concat else 1)

    @property
    def uses_reference_latent(self) -> bool:
        """Whether the denoising net reads the reference latent itself (residual skip or input concatenation)."""
        return self.prediction_type == "reference_residual" or self.reference_concat

    @property
    def audio_window_size(self) -> int:
        """W = 2·audio_window + 1 frames of audio features per video frame."""
        return 2 * self.audio_window + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) for checkpoints."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f, v in _items(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        _check_keys(data)
        tuples = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in data.items()})


def _items(config: ModelConfig):
    return ((f, getattr(config, f.name)) for f in dataclasses.fields(config))


def _check_keys(data: dict[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UsageError(f"unknown model config key(s) {unknown}; valid keys: {', '.join(valid)}.")


def _check_hallo(config: ModelConfig) -> None:
    """What Hallo's structure needs: SD1.5's four UNet levels and an 8× latent codec (the face locator's
    three stride-2 convs and the four mask resolutions follow from it)."""
    if config.down_block_types != HALLO_DOWN_BLOCKS or config.up_block_types != HALLO_UP_BLOCKS:
        raise UsageError(
            f"family 'hallo' needs SD1.5's block types {HALLO_DOWN_BLOCKS} / {HALLO_UP_BLOCKS}; start from the hallo "
            "or hallo-tiny preset."
        )
    if config.latent_codec != "vae" or config.latent_downsample != 8 or len(config.face_locator_channels) != 4:
        raise UsageError(
            "family 'hallo' needs latent_codec='vae' with 4 VAE levels (8× down) and 4 face_locator_channels; "
            "start from the hallo or hallo-tiny preset."
        )
    if config.prediction_type == "reference_residual" or config.reference_concat or config.audio_time_embedding:
        raise UsageError(
            "family 'hallo' is Hallo's own network: reference_residual, reference_concat and audio_time_embedding "
            "(fada's demo recipe) do not apply; leave them at their defaults."
        )
    if config.identity_encoder == "insightface" and not config.face_analysis_path:
        raise UsageError("identity_encoder='insightface' needs face_analysis_path, the folder holding models/*.onnx.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name}={value!r} is not valid; use one of {', '.join(choices)}.")


# Hallo's sampler (its inference config): v-prediction on the linear β schedule rescaled to zero terminal SNR,
# trailing DDIM spacing, ᾱ = 1 after the last step; both hallo presets share it
HALLO_SCHEDULE: dict[str, Any] = dict(prediction_type="v_prediction", beta_schedule="linear", zero_terminal_snr=True,
                                      timestep_spacing="trailing", set_alpha_to_one=True)  # fmt: skip

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "demo": ModelConfig(
        preset="demo",
        sample_size=64,
        # (16, 32, 64): a training step at batch 2 takes ~3 s on one loaded CPU core against ~9 s
        # for (32, 64, 128), so ~20 CPU minutes buy a few hundred steps.
        block_out_channels=(16, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
        cross_attention_dim=64,
        temporal_heads=4,
        frames_per_clip=8,
        motion_frames=2,
        n_mels=20,
        audio_feature_dim=80,
        audio_tokens=4,
        audio_hidden_dim=128,
        # DESIGN §3c: the demo's departures from the paper, chosen by bench/teacher_recipe.py (off at sd15)
        prediction_type="reference_residual",
        audio_time_embedding=True,
    ),
    "sd15": ModelConfig(
        preset="sd15",
        sample_size=512,
        latent_codec="vae",
        latent_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=8,
        cross_attention_dim=768,
        temporal_heads=8,
        frames_per_clip=16,
        motion_frames=4,
        n_mels=32,
        audio_feature_dim=128,
        audio_tokens=32,
        audio_hidden_dim=1024,
    ),
    # Hallo/Hallo2's released model (configs/inference/default.yaml, scripts/inference.py): SD1.5 UNets with
    # 4 identity tokens (ImageProjModel 512 → 4×768), 32 audio tokens from 5 frames × 12 wav2vec2-base layers
    # (AudioProjModel, hidden 512), motion modules with 8 heads and a 32-frame position table
    "hallo": ModelConfig(
        preset="hallo",
        family="hallo",
        sample_size=512,
        latent_codec="vae",
        latent_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=HALLO_DOWN_BLOCKS,
        up_block_types=HALLO_UP_BLOCKS,
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=8,
        cross_attention_dim=768,
        temporal_heads=8,
        temporal_max_frames=32,
        frames_per_clip=16,
        motion_frames=2,
        audio_encoder="hallo-wav2vec2",
        audio_feature_dim=12 * 768,
        audio_layers=12,
        audio_window=2,
        audio_tokens=32,
        audio_hidden_dim=512,
        **HALLO_SCHEDULE,
        identity_encoder="none",  # `fada import hallo` sets insightface + the folder's face_analysis/
    ),
    "hallo-tiny": ModelConfig(
        preset="hallo-tiny",
        family="hallo",
        sample_size=64,
        latent_codec="vae",
        latent_channels=4,
        vae_block_out_channels=(32, 32, 32, 32),
        vae_layers_per_block=1,
        vae_norm_num_groups=32,
        block_out_channels=(32, 64, 64, 64),  # multiples of 32: Hallo's motion modules hard-code GroupNorm(32)
        down_block_types=HALLO_DOWN_BLOCKS,
        up_block_types=HALLO_UP_BLOCKS,
        layers_per_block=1,
        norm_num_groups=32,
        attention_head_dim=2,
        cross_attention_dim=32,
        temporal_heads=8,
        temporal_max_frames=32,
        frames_per_clip=4,
        motion_frames=2,
        audio_tokens=4,
        audio_hidden_dim=32,
        identity_embedding_dim=512,
        face_locator_channels=(4, 8, 16, 32),
        **HALLO_SCHEDULE,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with `overrides` applied (e.g. `get_preset("demo", frames_per_clip=4)`)."""
    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r}; use one of {', '.join(PRESETS)}.")
    _check_keys(overrides)
    return dataclasses.replace(PRESETS[name], **overrides)
