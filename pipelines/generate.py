"""What generation is built from: its config, how a checkpoint is sampled, portrait and speech input, stats.

`pipelines.pipeline` puts these together (`FadaPipeline`, and `generate`: portrait + speech → mp4 +
stats JSON) as the numbered steps of docs/DESIGN.md §3–§4: the reference net runs once per clip of
F frames (on the reference image and the last M generated frames), the denoising net runs
``steps × branches`` times per clip. How a checkpoint is sampled is a `SamplingStrategy`
picked from its stage and mode (`strategy_for`): the teacher is DDIM with the three multi-CFG
branches (ε_a, ε_r, ε_b) batched in one forward per step (Eq. 9), NFE-D 25 × 3 = 75; a balanced
student is PeRFlow (DESIGN §4, inference) with the same three branches, 6 × 3 = 18; a fast student
is PeRFlow with one forward per step, the CFG scales entering as CFG tokens (Eq. 10), 6 × 1 = 6.

Long speech runs in bounded memory: the loop holds one clip (and its motion frames), each clip's
audio features come from a window of the speech (`AudioFeatureWindows`), and its frames go to the
mp4 encoder (`media.VideoWriter`) as soon as it is decoded.

Silent (all-zero) speech is allowed — it is the control condition of the mouth/audio check —
and only logs a warning; speech shorter than one video frame (40 ms) is an error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines import fada_math, media
from pipelines.checkpoint import CheckpointInfo, load_checkpoint_info
from pipelines.errors import CheckpointError, InputFileError, MediaError, UsageError
from pipelines.faces import detect_faces, square_crop_box
from pipelines.model import FadaModel
from pipelines.model_config import ModelConfig
from pipelines.progress import log
from pipelines.schedulers import DDIMSampler, PeRFlowScheduler, eps_alphas_cumprod

MIN_AUDIO_S = 1 / media.VIDEO_FPS  # shortest speech that makes one video frame (40 ms)


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate and how; None fields take the checkpoint's or the strategy's value."""

    steps: int | None = None  # sampler steps; None = the strategy's default (25 DDIM steps for a teacher)
    cfg_audio: float = 6.5  # multi-CFG audio scale cfg_a (Eq. 9)
    cfg_ref: float | None = None  # reference scale cfg_r (Eq. 9/10); None = the strategy's (2.5; 2.0 fast student)
    seed: int = 0  # seeds the initial noise of every clip (drawn on CPU, so devices agree)
    frames_per_clip: int | None = None  # F; None = the model config's frames_per_clip
    motion_frames: int | None = None  # M; None = the model config's motion_frames
    crop: bool = True  # detect the face and crop a square around it; False = centre square crop
    crop_scale: float = 1.6  # crop side = crop_scale × detected face size


@dataclass(frozen=True)
class GenerationStats:
    """The numbers written to ``OUT.json`` (and printed by the CLI)."""

    video: str | None  # the mp4 written (None: frames returned to Python by `FadaPipeline`)
    checkpoint: str  # the checkpoint folder used
    stage: str  # checkpoint stage: teacher | student
    mode: str  # checkpoint mode (as recorded in fada_checkpoint.json)
    sampler: str  # sampling strategy name
    nfe: int  # denoising-net evaluations per clip, each CFG branch counted (NFE-D), from model.nfe_counter
    nfe_total: int  # the same over all clips
    steps: int  # sampler steps per clip
    cfg_audio: float  # audio guidance scale used
    cfg_ref: float  # reference guidance scale used
    seed: int  # noise seed
    frames: int  # video frames written = round(audio seconds × fps)
    fps: int  # video frame rate
    audio_seconds: float  # speech duration
    clips: int  # clips of frames_per_clip generated
    frames_per_clip: int  # F
    motion_frames: int  # M
    seconds: float  # wall-clock seconds of the call (read inputs, generate, write), the model load not counted
    seconds_per_video_second: float  # seconds / audio_seconds
    load_seconds: float  # seconds the pipeline took to load the checkpoint (once, before this call)
    first_clip_seconds: float  # latency: audio in (the call, or the chunk completing clip 1's audio) → clip 1's frames
    streamed: bool  # written with --stream: a fragmented mp4 that grew clip by clip
    peak_memory_mb: float  # see peak_memory_source
    peak_memory_source: str  # cuda_max_allocated (GPU) or process_peak_rss (CPU, whole process)
    device: str  # torch device used
    dtype: str  # model dtype
    portrait: str | None = None  # the portrait's file (absolute), when one was given by path
    portrait_box: tuple[int, int, int] | None = None  # (x0, y0, side) of the square of it the model saw


# --- sampling strategies ----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingStrategy:
    """How a checkpoint is sampled: a scheduler and how each step's ε is guided."""

    name: str  # shown in the stats
    default_steps: int  # steps when GenerateConfig.steps is None
    make_scheduler: Callable[[int], DDIMSampler]  # steps -> object with .timesteps and .step(eps, z, i)
    guided_eps: Callable[..., torch.Tensor]  # (model, z, timestep, audio_tokens, reference, config) -> ε
    default_cfg_ref: float = 2.5  # --cfg-ref when not given: 2.5 without CFG distillation, 2.0 with it (DESIGN §4)
    branches: int = 3  # denoising-net evaluations per step: 3 multi-CFG branches (Eq. 9), 1 with CFG tokens (Eq. 10)


def multi_cfg_eps(model: FadaModel, z, timestep: float, audio_tokens, reference, config: GenerateConfig):
    """ε_cfg of Eq. 9 from ONE denoising-net forward of batch 3 (ε_a, ε_r, ε_b; DESIGN §3 states).

    ``z``: (1, F, C, h, w) float32; ``audio_tokens``: (1, F, N, D); ``reference``: the clip's
    `ReferenceFeatures`. Adds 3 to ``model.nfe_counter``.
    """
    eps_a, eps_r, eps_b = model.denoise_multi_cfg(z.to(model.dtype), float(timestep), audio_tokens, reference)
    return fada_math.multi_cfg(eps_a.float(), eps_r.float(), eps_b.float(), config.cfg_audio, config.cfg_ref)


def cfg_token_eps(model: FadaModel, z, timestep: float, audio_tokens, reference, config: GenerateConfig):
    """ε of a fast student: ONE forward with both conditions, the scales given as CFG tokens (Eq. 10).

    A student distilled with ``--cfg-conditioning none`` has no CFG input; the scales are then
    baked into its weights and ignored here. Adds 1 to ``model.nfe_counter``.
    """
    scales = None if model.cfg_conditioning is None else (config.cfg_audio, config.cfg_ref)  # filled on the device
    eps = model.denoise(z.to(model.dtype), float(timestep), audio_tokens, reference, False, False, scales)
    return eps.float()


def multi_cfg_native(model: FadaModel, z, timestep: float, audio_tokens, reference, config: GenerateConfig):
    """`multi_cfg_eps` on the network's own outputs (v for a v-prediction teacher; Eq. 9 is linear in them),
    for `DDIMSampler` steps that take v (exact at zero terminal SNR)."""
    branches = model.denoise_multi_cfg(z.to(model.dtype), float(timestep), audio_tokens, reference, native=True)
    return fada_math.multi_cfg(*(b.float() for b in branches), config.cfg_audio, config.cfg_ref)


TEACHER_DDIM = SamplingStrategy(
    name="ddim-multi-cfg", default_steps=25, make_scheduler=DDIMSampler, guided_eps=multi_cfg_eps
)
HALLO_DDIM_STEPS = 40  # Hallo's inference_steps
STUDENT_MODES = ("balanced", "fast")  # modes `fada distill` writes


def teacher_strategy(model_config: ModelConfig | None) -> SamplingStrategy:
    """DDIM over the model's schedule: SD1.5's (`TEACHER_DDIM`), or e.g. Hallo's v-prediction zero-SNR trailing one."""
    if model_config is None or (
        model_config.prediction_type != "v_prediction" and model_config == _with_sd15(model_config)
    ):
        return TEACHER_DDIM
    v = model_config.prediction_type == "v_prediction"
    return SamplingStrategy(
        name="ddim-multi-cfg",
        default_steps=HALLO_DDIM_STEPS if model_config.family == "hallo" else 25,
        make_scheduler=lambda steps: DDIMSampler.for_model(model_config, steps),
        guided_eps=multi_cfg_native if v else multi_cfg_eps,
    )


def _with_sd15(config: ModelConfig) -> ModelConfig:
    return dataclasses.replace(config, beta_schedule="scaled_linear", zero_terminal_snr=False,
                               timestep_spacing="leading", set_alpha_to_one=False)  # fmt: skip


def strategy_for(
    stage: str, mode: str, checkpoint: Path, windows: int = 4, model_config: ModelConfig | None = None
) -> SamplingStrategy:
    """The sampling strategy of a checkpoint's stage/mode: teacher DDIM, student PeRFlow over K windows.

    ``model_config`` selects the model's own schedule (default: SD1.5's)."""
    if stage == "teacher":
        return teacher_strategy(model_config)
    if stage == "student" and mode in STUDENT_MODES:
        fast = mode == "fast"
        alphas_cumprod = None if model_config is None else eps_alphas_cumprod(model_config)
        return SamplingStrategy(
            name="perflow-cfg-tokens" if fast else "perflow-multi-cfg",
            default_steps=6,
            make_scheduler=lambda steps: PeRFlowScheduler(steps, K=windows, alphas_cumprod=alphas_cumprod),
            guided_eps=cfg_token_eps if fast else multi_cfg_eps,
            default_cfg_ref=2.0 if fast else 2.5,
            branches=1 if fast else 3,
        )
    raise CheckpointError(
        f"{checkpoint} is a {stage} checkpoint of unknown mode {mode!r}; generate from a teacher "
        "(`fada train-teacher`) or a fast/balanced student (`fada distill`)."
    )


def checkpoint_strategy(checkpoint: str | Path | CheckpointInfo) -> SamplingStrategy:
    """`strategy_for` of a checkpoint folder or its loaded info (its stage, mode and PeRFlow windows)."""
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else load_checkpoint_info(checkpoint)
    windows = int(info.config.get("train", {}).get("windows", 4)) if info.stage == "student" else 4
    model = info.config.get("model")
    return strategy_for(
        info.stage, info.mode, Path(info.path), windows, ModelConfig.from_dict(model) if model else None
    )


# --- inputs -------------------------------------------------------------------------------------


def read_portrait(path: Path) -> np.ndarray:
    """Any PIL-readable image → RGB uint8 (H, W, 3); alpha is composited on white."""
    if not path.is_file():
        raise InputFileError(f"portrait {path} does not exist; pass an image file with `image`.")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError(f"cannot read portrait {path} ({exc}); pass a PNG or JPEG image.") from exc
    return image_to_rgb(image)


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode → RGB uint8 (H, W, 3); alpha is composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grayscale: rescale to 8 bit
        values = np.asarray(image, dtype=np.float64)
        span = max(values.max() - values.min(), 1e-12)
        image = Image.fromarray(np.round(255 * (values - values.min()) / span).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def portrait_box(rgb: np.ndarray, crop: bool, scale: float, path: Path | str) -> tuple[int, int, int]:
    """(x0, y0, side) of the square the model sees: face-centred, or the centre square with ``crop=False``."""
    height, width = rgb.shape[:2]
    if crop:
        faces = detect_faces(rgb)
        if not faces:
            raise MediaError(f"no face found in {path}; use a frontal portrait, or skip the face crop: `crop`.")
        return square_crop_box(faces[0], width, height, scale=scale)
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def cut_portrait(rgb: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """The square ``box`` = (x0, y0, side) of ``rgb`` resized to size² (Lanczos) → (size, size, 3) uint8."""
    x0, y0, side = box
    window = Image.fromarray(rgb[y0 : y0 + side, x0 : x0 + side])
    return np.array(window.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def crop_portrait(rgb: np.ndarray, size: int, crop: bool, scale: float, path: Path | str) -> np.ndarray:
    """A square face-centred window (or the centre square with ``crop=False``) resized to size²."""
    return cut_portrait(rgb, portrait_box(rgb, crop, scale, path), size)


def read_speech(path: Path, quiet: bool) -> np.ndarray:
    """Speech of any format/rate → float32 mono 16 kHz; too short is an error, silence a warning."""
    if not path.is_file():
        raise InputFileError(f"speech {path} does not exist; pass an audio file with `audio`.")
    audio = media.read_audio(path)
    seconds = len(audio) / media.AUDIO_SR
    if seconds < MIN_AUDIO_S:
        raise MediaError(
            f"speech {path} lasts {seconds:.3f} s, shorter than one video frame ({MIN_AUDIO_S * 1000:.0f} ms); "
            "pass a longer recording."
        )
    if not np.any(audio):
        log(f"[yellow]warning:[/] speech {path} is silent; the mouth will not follow any sound.", quiet=quiet)
    return audio


def check_config(config: GenerateConfig, model: FadaModel, strategy: SamplingStrategy) -> tuple[int, int, int]:
    """Resolve (steps, F, M) and check them; `UsageError` with the bad value otherwise."""
    steps = strategy.default_steps if config.steps is None else config.steps
    frames = model.config.frames_per_clip if config.frames_per_clip is None else config.frames_per_clip
    motion = model.config.motion_frames if config.motion_frames is None else config.motion_frames
    if frames < 1:
        raise UsageError(f"`frames_per_clip` {frames} is not valid; use 1 or more.")
    if motion < 1:
        raise UsageError(f"`motion_frames` {motion} is not valid; use 1 or more.")
    if frames > model.config.temporal_max_frames:
        raise UsageError(
            f"`frames_per_clip` {frames} exceeds this model's temporal_max_frames "
            f"{model.config.temporal_max_frames}; use at most that."
        )
    if motion > frames:
        raise UsageError(f"`motion_frames` {motion} exceeds `frames_per_clip` {frames}; use at most {frames}.")
    for name, value in (("`cfg_audio`", config.cfg_audio), ("`cfg_ref`", config.cfg_ref)):
        if not math.isfinite(value):
            raise UsageError(f"{name} {value} is not a finite number; use e.g. 6.5 or 2.5.")
    if not 1.0 <= config.crop_scale <= 4.0:
        raise UsageError(f"crop scale {config.crop_scale} is outside [1, 4]; use e.g. 1.6.")
    return steps, frames, motion


# --- outputs ------------------------------------------------------------------------------------


def to_uint8_frames(images: torch.Tensor) -> np.ndarray:
    """Decoded images in [-1, 1], (F, 3, H, W) → uint8 (F, H, W, 3)."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MB, source): CUDA max allocated on a GPU, the process's peak RSS elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stats_path(out_mp4: Path) -> Path:
    """``OUT.json`` beside ``OUT.mp4``."""
    return out_mp4.with_suffix(".json")
