"""`FadaPipeline`: a checkpoint loaded once, then any number of videos, whole or streamed.

    pipe = FadaPipeline.from_checkpoint("runs/demo/student_fast", device="cpu")
    result = pipe("face.png", "speech.wav", seed=0)        # .frames (T, H, W, 3) uint8, .audio, .stats
    for frames in pipe.stream("face.png", microphone_chunks()):  # each clip as soon as its audio is in
        show(frames)

`__call__`, `stream` and `write` (what `fada generate` runs) share one clip loop (`_clips`), the
numbered steps of DESIGN §3–4 described in `pipelines.generate`. Streaming: clip k (frames
[kF, (k+1)F)) is generated as soon as the audio received covers its frames, the ±`audio_window`
frames its features stack and the encoder's own context (1 frame for mel, 50 for wav2vec2); the
rest when the audio ends. For the mel encoder a streamed clip's features are exactly those of the
whole speech, so the streamed frames equal the whole-video call's; wav2vec2 normalises over the
whole file, which a stream only knows at its end, so a streamed clip uses the statistics of the
audio received so far (close to, not equal to, the whole call).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pipelines import media
from pipelines.audio import AudioFeatureWindows, Wav2Vec2Encoder, build_audio_encoder
from pipelines.checkpoint import CheckpointInfo, load_checkpoint_info
from pipelines.devices import enable_tf32, resolve_device, resolve_dtype
from pipelines.errors import InputFileError, MediaError, UsageError
from pipelines.generate import (
    MIN_AUDIO_S,
    GenerateConfig,
    GenerationStats,
    SamplingStrategy,
    check_config,
    checkpoint_strategy,
    cut_portrait,
    image_to_rgb,
    peak_memory,
    portrait_box,
    read_portrait,
    read_speech,
    stats_path,
    to_uint8_frames,
    write_json_atomic,
)
from pipelines.model import FadaModel
from pipelines.progress import log, make_progress

SAMPLES_PER_FRAME = media.AUDIO_SR // media.VIDEO_FPS  # 640


@dataclass(frozen=True)
class GenerationResult:
    """What a whole-video call returns."""

    frames: np.ndarray  # (T, H, W, 3) uint8, T = round(audio seconds × 25)
    audio: np.ndarray  # the speech as used: float32 mono 16 kHz
    stats: GenerationStats  # what OUT.json holds (video is None: nothing was written)


class StreamedGeneration:
    """Iterate for each clip's frames, (≤F, H, W, 3) uint8; `stats` and `audio` are set at the end."""

    def __init__(self, clips: Iterator[np.ndarray]):
        self._clips = clips
        self.stats: GenerationStats | None = None  # set when the last clip has been yielded
        self.audio: np.ndarray | None = None  # the whole speech received, float32 mono 16 kHz

    def __iter__(self) -> Iterator[np.ndarray]:
        self.stats, self.audio = yield from self._clips


def speech_array(audio, quiet: bool = True) -> np.ndarray:
    """A path, or a ``(samples, sample_rate)`` pair, → float32 mono 16 kHz, checked like `read_speech`."""
    if isinstance(audio, str | Path):
        return read_speech(Path(audio), quiet)
    samples = chunk_samples(audio)
    if len(samples) / media.AUDIO_SR < MIN_AUDIO_S:
        raise MediaError(
            f"speech lasts {len(samples) / media.AUDIO_SR:.3f} s, shorter than one video frame "
            f"({MIN_AUDIO_S * 1000:.0f} ms); pass a longer recording."
        )
    if not np.any(samples):
        log("[yellow]warning:[/] the speech is silent; the mouth will not follow any sound.", quiet=quiet)
    return samples


def chunk_samples(chunk) -> np.ndarray:
    """A ``(samples, sample_rate)`` pair (or bare 16 kHz samples) → float32 mono 16 kHz; (N, C) is averaged."""
    if isinstance(chunk, tuple) and len(chunk) == 2 and np.isscalar(chunk[1]):
        samples, rate = np.asarray(chunk[0]), int(chunk[1])
    else:
        samples, rate = np.asarray(chunk), media.AUDIO_SR
    if samples.ndim == 2:
        samples = samples.mean(axis=1)  # (N, channels) → (N,)
    if samples.ndim != 1 or rate <= 0:
        raise UsageError(f"audio of shape {samples.shape} at {rate} Hz is not valid; pass (samples, sample_rate).")
    if np.issubdtype(samples.dtype, np.integer):  # PCM, e.g. a microphone's int16
        samples = samples / float(np.iinfo(samples.dtype).max)
    samples = samples.astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise UsageError("audio holds NaN or inf values; pass finite samples in [-1, 1].")
    return media.resample_audio(samples, rate) if rate != media.AUDIO_SR else samples


def portrait_array(image) -> tuple[np.ndarray, str]:
    """A path, PIL image or (H, W, 3) uint8 RGB array → (RGB uint8 array, how errors name it)."""
    if isinstance(image, str | Path):
        return read_portrait(Path(image)), str(image)
    if isinstance(image, Image.Image):
        return image_to_rgb(ImageOps.exif_transpose(image)), "the portrait"
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise UsageError(f"portrait array of shape {rgb.shape} and {rgb.dtype} is not valid; pass (H, W, 3) uint8 RGB.")
    return rgb, "the portrait"


class FadaPipeline:
    """One loaded teacher or student checkpoint and its sampling strategy; call it for videos."""

    def __init__(self, model: FadaModel, info: CheckpointInfo, device: torch.device, load_seconds: float = 0.0):
        self.model = model.eval()
        self.info = info  # the checkpoint's fada_checkpoint.json
        self.strategy: SamplingStrategy = checkpoint_strategy(info)
        self.device = device
        self.dtype = model.dtype
        self.load_seconds = load_seconds  # how long `from_checkpoint` took
        self.audio_encoder = build_audio_encoder(model.config).to(device)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
    ) -> FadaPipeline:
        """Load a checkpoint folder (teacher or fast/balanced student) once."""
        started = time.perf_counter()
        device = resolve_device(device) if isinstance(device, str) else device
        dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
        enable_tf32(device)  # fp32 matmuls on TF32 tensor cores where the GPU has them
        info = load_checkpoint_info(path)
        checkpoint_strategy(info)  # an unknown mode is an error before the weights are read
        model = FadaModel.from_checkpoint(path, expect_stage=info.stage, device=device, dtype=dtype)
        return cls(model, info, device, time.perf_counter() - started)

    def config(self, steps=None, cfg_audio=None, cfg_ref=None, seed=0, config: GenerateConfig | None = None):
        """`GenerateConfig` from keyword overrides (None keeps ``config``'s, or the default's, value)."""
        config = GenerateConfig() if config is None else config
        overrides = {"steps": steps, "cfg_audio": cfg_audio, "cfg_ref": cfg_ref}
        return replace(config, seed=seed, **{k: v for k, v in overrides.items() if v is not None})

    def __call__(self, image, audio, steps=None, cfg_audio=None, cfg_ref=None, seed=0,
                 config: GenerateConfig | None = None, quiet: bool = True) -> GenerationResult:  # fmt: skip
        """The whole video of ``image`` (path, PIL image or RGB array) speaking ``audio`` (path or (samples, rate))."""
        started = time.perf_counter()
        portrait, name = portrait_array(image)
        speech = speech_array(audio, quiet)
        config = self.config(steps, cfg_audio, cfg_ref, seed, config)
        run = StreamedGeneration(self._clips(portrait, [speech], config, quiet, name, started, streaming=False))
        frames = np.concatenate(list(run))  # (T, H, W, 3)
        return GenerationResult(frames, speech, run.stats)

    def stream(self, image, audio_chunks: Iterable, steps=None, cfg_audio=None, cfg_ref=None, seed=0,
               config: GenerateConfig | None = None, quiet: bool = True, name: str | None = None,
               started: float | None = None) -> StreamedGeneration:  # fmt: skip
        """Each clip's frames as soon as enough of ``audio_chunks`` ((samples, rate) pairs or 16 kHz arrays) is in.

        The first-clip latency in the stats runs from the arrival of the chunk that completed the
        first clip's audio (or from ``started``) to its frames.
        """
        if isinstance(audio_chunks, str | Path | tuple):
            raise UsageError(
                f"stream() takes an iterable of audio chunks, not {type(audio_chunks).__name__}; "
                "for a whole file or (samples, rate) pair call the pipeline itself."
            )
        portrait, label = portrait_array(image)
        config = self.config(steps, cfg_audio, cfg_ref, seed, config)
        return StreamedGeneration(self._clips(portrait, audio_chunks, config, quiet, name or label, started, True))

    def write(self, image, audio, out_mp4: str | Path, config: GenerateConfig | None = None,
              stream: bool = False, quiet: bool = False) -> GenerationStats:  # fmt: skip
        """``out_mp4`` (speech muxed) and ``OUT.json``; ``stream=True`` grows a fragmented mp4 clip by clip."""
        run = self.write_clips(image, audio, out_mp4, config, stream, quiet)
        for _ in run:
            pass
        return run.stats

    def write_clips(self, image, audio, out_mp4: str | Path, config: GenerateConfig | None = None,
                    stream: bool = False, quiet: bool = False) -> StreamedGeneration:  # fmt: skip
        """`write` as an iterator: yields (frames written, frames in all) after each clip; ``.stats`` at the end."""
        started = time.perf_counter()
        config = GenerateConfig() if config is None else config
        out_mp4 = Path(out_mp4)
        if out_mp4.suffix.lower() != ".mp4" or out_mp4.is_dir():
            raise UsageError(f"output {out_mp4} must be an .mp4 file name; e.g. -o out.mp4.")
        portrait, name = portrait_array(image)
        speech = speech_array(audio, quiet)

        def clips():
            out_mp4.parent.mkdir(parents=True, exist_ok=True)
            run = StreamedGeneration(self._clips(portrait, [speech], config, quiet, name, started, streaming=False))
            total = round(len(speech) * media.VIDEO_FPS / media.AUDIO_SR)
            # each clip's frames go to the encoder as soon as it is decoded: memory does not grow with the speech
            with media.VideoWriter(out_mp4, audio=speech, fragmented=stream) as writer:
                for frames in run:
                    writer.write(frames)
                    yield writer.frames_written, total
            path = str(Path(image).absolute()) if isinstance(image, str | Path) else None
            stats = replace(run.stats, video=str(out_mp4), streamed=stream, seconds=time.perf_counter() - started,
                            portrait=path)  # fmt: skip
            stats = replace(stats, seconds_per_video_second=stats.seconds / stats.audio_seconds)
            write_json_atomic(stats_path(out_mp4), asdict(stats))
            return stats, speech

        return StreamedGeneration(clips())

    def _clips(self, portrait_rgb: np.ndarray, audio_chunks: Iterable, config: GenerateConfig, quiet: bool,
               name: str, started: float | None, streaming: bool):  # fmt: skip
        """Yield each clip's frames; return (stats, speech). The steps of `pipelines.generate`.

        ``streaming=False``: the chunks hold the whole speech, every clip's features come from it.
        """
        started = time.perf_counter() if started is None else started
        model, strategy, device = self.model, self.strategy, self.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        # 1. check the config; the image-stage teacher guides by the reference only; crop the portrait
        if config.cfg_ref is None:
            config = replace(config, cfg_ref=strategy.default_cfg_ref)
        if self.info.image_only and config.cfg_audio != 0:
            log(f"[yellow]note:[/] {self.info.path} is an image-stage teacher (no trained audio path); generating "
                "with `cfg_audio` 0, so the mouth will not follow the speech.", quiet=quiet)  # fmt: skip
            config = replace(config, cfg_audio=0.0)
        steps, frames_per_clip, motion_frames = check_config(config, model, strategy)
        scheduler = strategy.make_scheduler(steps)
        box = portrait_box(portrait_rgb, config.crop, config.crop_scale, name)
        portrait = cut_portrait(portrait_rgb, box, model.config.sample_size)
        face = None
        if model.hallo is not None:  # the hallo family's face inputs: identity embedding, face region, masks
            from pipelines.hallo_inputs import face_conditions

            face = face_conditions(portrait[None], model.config).to(device, self.dtype)

        # 2. the reference latent; the first clip's motion frames are the reference repeated
        with torch.no_grad():
            reference_image = torch.from_numpy(portrait).permute(2, 0, 1).float().div(127.5).sub(1)  # (3, H, W)
            reference_latent = model.encode_images(reference_image[None].to(device, self.dtype))  # (1, C, h, w)
            motion_latents = reference_latent[:, None].expand(1, motion_frames, *reference_latent.shape[1:])
        generator = torch.Generator().manual_seed(config.seed)
        nfe_per_clip: list[int] = []
        # audio a clip needs beyond its last frame: the stacked ±window frames and the encoder's context
        context = self.audio_encoder.context_frames if isinstance(self.audio_encoder, Wav2Vec2Encoder) else 1
        lookahead = self.audio_encoder.window + context
        received: list[np.ndarray] = []
        n_received = 0
        first_clip_s: float | None = None
        chunk_arrived = started

        def clip_frames(clip: int, windows: AudioFeatureWindows) -> np.ndarray:
            nonlocal motion_latents
            # 3. reference features ONCE per clip, shared by every denoising step and branch; the clip's audio
            reference = model.reference_features(reference_latent, motion_latents, face)
            first = clip * frames_per_clip
            audio_tokens = model.audio_tokens(windows(first, first + frames_per_clip)[None].to(device))  # (1, F, N, D)
            # 4. denoising loop from seeded noise
            shape = (1, frames_per_clip, *reference_latent.shape[1:])  # (1, F, C, h, w)
            z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, non_blocking=True)
            nfe_before = model.nfe_counter
            for i, timestep in enumerate(scheduler.timesteps):
                eps = strategy.guided_eps(model, z, timestep, audio_tokens, reference, config)
                z = scheduler.step(eps, z, i)
                progress.advance(task)
            nfe_per_clip.append(model.nfe_counter - nfe_before)
            # 5. decode; the last M frames become the next clip's motion frames
            images = model.decode_latents(z.to(self.dtype))[0].clamp(-1, 1)  # (F, 3, H, W)
            motion_latents = model.encode_images(images[None, -motion_frames:])  # (1, M, C, h, w)
            return to_uint8_frames(images)  # (F, H, W, 3)

        clip = 0
        with torch.no_grad(), make_progress(quiet) as progress:
            task = progress.add_task("denoising", total=None)
            # 6. while the audio arrives: every clip whose audio (and look-ahead) is in
            for chunk in audio_chunks:
                samples = chunk_samples(chunk)
                chunk_arrived = time.perf_counter() if first_clip_s is None else chunk_arrived
                received.append(samples)
                n_received += len(samples)
                while streaming and n_received >= ((clip + 1) * frames_per_clip + lookahead) * SAMPLES_PER_FRAME:
                    heard = np.concatenate(received)
                    windows = AudioFeatureWindows(heard, len(heard) // SAMPLES_PER_FRAME, self.audio_encoder, device)
                    progress.update(task, description=f"clip {clip + 1}")
                    frames = clip_frames(clip, windows)
                    first_clip_s = time.perf_counter() - chunk_arrived if first_clip_s is None else first_clip_s
                    yield frames
                    clip += 1
            # 7. the audio has ended: the remaining clips, the last one padded with silence, then trimmed
            speech = np.concatenate(received) if received else np.zeros(0, np.float32)
            if len(speech) / media.AUDIO_SR < MIN_AUDIO_S:
                raise MediaError(
                    f"speech lasts {len(speech) / media.AUDIO_SR:.3f} s, shorter than one video frame "
                    f"({MIN_AUDIO_S * 1000:.0f} ms); pass a longer recording."
                )
            total_frames = round(len(speech) * media.VIDEO_FPS / media.AUDIO_SR)
            n_clips = math.ceil(total_frames / frames_per_clip)
            windows = AudioFeatureWindows(speech, n_clips * frames_per_clip, self.audio_encoder, device)
            progress.update(task, total=n_clips * steps, completed=clip * steps)
            for rest in range(clip, n_clips):
                progress.update(task, description=f"clip {rest + 1}/{n_clips}")
                frames = clip_frames(rest, windows)[: total_frames - rest * frames_per_clip]  # (≤F, H, W, 3)
                first_clip_s = time.perf_counter() - chunk_arrived if first_clip_s is None else first_clip_s
                yield frames

        # 8. the stats (OUT.json's fields; `write` adds the video's path)
        memory_mb, memory_source = peak_memory(device)
        seconds = time.perf_counter() - started
        audio_seconds = len(speech) / media.AUDIO_SR
        stats = GenerationStats(
            video=None,
            checkpoint=str(self.info.path),
            stage=self.info.stage,
            mode=self.info.mode,
            sampler=strategy.name,
            nfe=max(nfe_per_clip),
            nfe_total=sum(nfe_per_clip),
            steps=steps,
            cfg_audio=config.cfg_audio,
            cfg_ref=config.cfg_ref,
            seed=config.seed,
            frames=total_frames,
            fps=media.VIDEO_FPS,
            audio_seconds=audio_seconds,
            clips=n_clips,
            frames_per_clip=frames_per_clip,
            motion_frames=motion_frames,
            seconds=seconds,
            seconds_per_video_second=seconds / audio_seconds,
            load_seconds=self.load_seconds,
            first_clip_seconds=first_clip_s,
            streamed=False,
            peak_memory_mb=memory_mb,
            peak_memory_source=memory_source,
            device=str(device),
            dtype=str(self.dtype).removeprefix("torch."),
            portrait_box=tuple(int(v) for v in box),
        )
        return stats, speech


def generate(
    checkpoint: str | Path,
    image: str | Path,
    audio: str | Path,
    out_mp4: str | Path,
    config: GenerateConfig | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    quiet: bool = False,
    stream: bool = False,
) -> GenerationStats:
    """Generate ``out_mp4`` (speech muxed) and ``out_mp4.json``: `FadaPipeline.write` of a freshly loaded checkpoint.

    To generate several videos from one checkpoint, load it once with `FadaPipeline.from_checkpoint`.
    """
    out_mp4 = Path(out_mp4)
    if out_mp4.suffix.lower() != ".mp4" or out_mp4.is_dir():
        raise UsageError(f"output {out_mp4} must be an .mp4 file name; e.g. -o out.mp4.")
    if not Path(image).is_file():
        raise InputFileError(f"portrait {image} does not exist; pass an image file with `image`.")
    if not Path(audio).is_file():
        raise InputFileError(f"speech {audio} does not exist; pass an audio file with `audio`.")
    pipe = FadaPipeline.from_checkpoint(checkpoint, device=device, dtype=dtype)
    return pipe.write(image, audio, out_mp4, config or GenerateConfig(), stream=stream, quiet=quiet)
