"""All video and audio decoding and encoding: PyAV for mp4, soundfile for wav/flac/ogg.

Conventions (DESIGN §2): frames are RGB uint8 ``(T, H, W, 3)``; audio is float32 mono in [-1, 1],
resampled to 16 kHz on read with a polyphase filter (`scipy.signal.resample_poly`).

Audio/video alignment: time 0 is the first video frame. On read, every decoded audio frame is
placed by its presentation time relative to the video stream's start, so AAC encoder priming
(the ~1024 samples the encoder adds in front, which mp4 hides with an edit list) never shifts
audio against video. On write, both streams start at pts 0.

Writes are atomic: a temporary file in the destination folder, then `os.replace`; nothing is left
behind when a write fails.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pipelines.errors import MediaError

AUDIO_SR = 16_000  # sample rate of every audio signal inside fada (Hz)
VIDEO_FPS = 25  # frame rate of clips (DESIGN §2)

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg"}  # read with soundfile; anything else goes through PyAV
WRITE_AUDIO_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}  # suffix -> (format, subtype)
WRITE_VIDEO_SUFFIXES = {".mp4"}


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns about a video file without decoding its frames."""

    path: Path  # the file probed
    fps: float  # frames per second of the video stream
    n_frames: int  # number of video frames
    width: int  # frame width in pixels
    height: int  # frame height in pixels
    duration_s: float  # n_frames / fps
    has_audio: bool  # whether the file has an audio stream
    audio_sr: int | None  # the audio stream's sample rate, None without audio


# ---------------------------------------------------------------------------------------------
# helpers


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"media file not found: {path}; check the path.")
    if not path.is_file():
        raise MediaError(f"not a file: {path}; pass a video or audio file, not a folder.")


@contextmanager
def _open_container(path: Path):
    """Open a media file for reading; FFmpeg failures become a `MediaError` naming the file."""
    _check_exists(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(
            f"cannot open {path} as a media file ({exc}); re-encode it (e.g. ffmpeg -i IN OUT.mp4)."
        ) from exc
    try:
        yield container
    except av.FFmpegError as exc:
        raise MediaError(f"{path} is corrupt or truncated ({exc}); re-encode or re-download it.") from exc
    finally:
        container.close()


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise MediaError(f"{path} has no video stream; pass a video file (mp4).")
    return container.streams.video[0]


def _fps(stream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise MediaError(f"{path} has no usable frame rate; re-encode it with a fixed rate (ffmpeg -r 25).")
    return float(rate)


def _stream_start_s(stream) -> float:
    """Presentation time of a stream's first sample (seconds); 0 when unknown."""
    if stream.start_time is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise MediaError(f"output folder does not exist: {path.parent}; create it first.")
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def resample_audio(audio: np.ndarray, sr_in: int, sr_out: int = AUDIO_SR) -> np.ndarray:
    """Resample mono float audio with a polyphase anti-aliasing filter (`resample_poly`)."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def _sample_range(n: float, sr: int, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """[first, last) sample indices for an optional [start_s, end_s) window, clipped to [0, n]."""
    first = 0 if start_s is None else max(0, round(start_s * sr))
    last = n if end_s is None else min(n, round(end_s * sr))
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise MediaError(f"empty time window: start_s={start_s} >= end_s={end_s}; pass start_s < end_s.")
    return first, max(first, last)


# ---------------------------------------------------------------------------------------------
# reading


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, frame count, size and audio presence of a video, without decoding frames."""
    path = Path(path)
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        fps = _fps(stream, path)
        n_frames = stream.frames
        if not n_frames:  # the container does not record it: count packets (no decoding)
            n_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
        if n_frames <= 0:
            raise MediaError(f"{path} has no video frames; re-encode or re-download it.")
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=path,
            fps=fps,
            n_frames=int(n_frames),
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            duration_s=n_frames / fps,
            has_audio=audio is not None,
            audio_sr=int(audio.codec_context.sample_rate) if audio is not None else None,
        )


def iter_video(path: str | Path, start_s: float | None = None, end_s: float | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames ``(H, W, 3)`` whose frame index i satisfies start_s <= i / fps < end_s.

    A frame's index comes from its presentation time relative to the stream start, so seeking to
    ``start_s`` in a long video does not decode everything before it.
    """
    path = Path(path)
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        fps = _fps(stream, path)
        t0 = _stream_start_s(stream)
        first = 0 if start_s is None else round(start_s * fps)
        last = math.inf if end_s is None else round(end_s * fps)
        if first >= last:
            raise MediaError(f"empty time window for {path}: start_s={start_s}, end_s={end_s}; pass start_s < end_s.")
        if first > 0:
            container.seek(int((t0 + first / fps) / stream.time_base), stream=stream, backward=True)
        yielded = 0
        for frame in container.decode(stream):
            index = yielded + first if frame.pts is None else round((frame.pts * stream.time_base - t0) * fps)
            if index < first:
                continue
            if index >= last:
                break
            yielded += 1
            yield frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8


def _window_text(start_s: float | None, end_s: float | None) -> str:
    """How a message names the requested time window: 'at all' when none was asked for."""
    if start_s is None and end_s is None:
        return "at all"
    return f"between {0.0 if start_s is None else start_s} s and {'the end' if end_s is None else f'{end_s} s'}"


def read_video(path: str | Path, start_s: float | None = None, end_s: float | None = None) -> tuple[np.ndarray, float]:
    """Decode a video's frames in [start_s, end_s) as ``(T, H, W, 3)`` RGB uint8, and its fps."""
    path = Path(path)
    info = probe_video(path)
    frames = list(iter_video(path, start_s, end_s))
    if not frames:
        raise MediaError(
            f"no frames in {path} {_window_text(start_s, end_s)} (video is {info.duration_s:.2f} s); "
            "pick a window inside the video or re-export the file."
        )
    return np.stack(frames), info.fps  # (T, H, W, 3)


def _decode_audio_track(path: Path, start_s: float | None, end_s: float | None) -> tuple[np.ndarray, int]:
    """Decode [start_s, end_s) of a container's first audio track: mono float32 at its own rate.

    Time 0 is the first video frame; each decoded frame is placed by its pts, so encoder priming
    (negative pts) is dropped and seeking into a long file lands on the right samples.
    """
    with _open_container(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio track; pass a file with audio or a separate wav/flac/ogg.")
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate)
        t0 = _stream_start_s(container.streams.video[0]) if container.streams.video else 0.0
        end = math.inf  # the container's own end of audio: drops the encoder's padding after the last sample
        if stream.duration is not None:
            end = round(((stream.start_time or 0) + stream.duration) * stream.time_base * sr - t0 * sr)
        first, last = _sample_range(end, sr, start_s, end_s)
        if first > 2 * sr:  # long file: seek near the window instead of decoding everything before it
            container.seek(int((t0 + first / sr - 1.0) / stream.time_base), stream=stream, backward=True)
        to_float = av.AudioResampler(format="fltp")  # keeps rate and layout, only converts sample format
        chunks: list[tuple[int, np.ndarray]] = []  # (first sample index, (n,) mono)
        index = 0
        for frame in container.decode(stream):
            if frame.pts is not None:
                index = round((frame.pts * stream.time_base - t0) * sr)
            if index >= last:
                break
            for converted in to_float.resample(frame):
                samples = converted.to_ndarray().mean(axis=0)  # (channels, n) -> (n,)
                chunks.append((index, samples))
                index += samples.shape[0]
    last = min(last, max((start + len(samples) for start, samples in chunks), default=first))
    if last <= first:
        raise MediaError(
            f"the audio track of {path} holds no samples {_window_text(start_s, end_s)}; "
            "pick a window inside the file or pass a recording with sound."
        )
    audio = np.zeros(max(0, last - first), dtype=np.float32)  # (n,) window [first, last)
    for start, samples in chunks:
        lo, hi = max(start, first), min(start + len(samples), last)
        if hi > lo:
            audio[lo - first : hi - first] = samples[lo - start : hi - start]
    return audio, sr


def read_audio(
    path: str | Path, sr: int = AUDIO_SR, start_s: float | None = None, end_s: float | None = None
) -> np.ndarray:
    """Read audio from wav/flac/ogg or a video's audio track as float32 mono at ``sr`` Hz, ``(N,)``.

    Channels are averaged; the window [start_s, end_s) is cut at the source rate, then resampled.
    For a video, time 0 is its first frame (see the module docstring on AAC priming).
    """
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        _check_exists(path)
        try:
            info = sf.info(str(path))
            first, last = _sample_range(info.frames, info.samplerate, start_s, end_s)
            data, native_sr = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise MediaError(f"cannot read audio file {path} ({exc}); re-export it as wav, flac or ogg.") from exc
        audio = data.mean(axis=1)  # (n, channels) -> (n,)
        if audio.size == 0:
            raise MediaError(
                f"{path} holds no samples {_window_text(start_s, end_s)}; "
                "pick a window inside the file or pass a recording with sound."
            )
    else:
        audio, native_sr = _decode_audio_track(path, start_s, end_s)
    return resample_audio(audio, native_sr, sr)


# ---------------------------------------------------------------------------------------------
# writing


def _check_frames(frames: np.ndarray, path: Path) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"cannot write {path}: frames must be (T, H, W, 3) RGB, got shape {frames.shape}.")
    if frames.dtype != np.uint8:
        raise MediaError(f"cannot write {path}: frames must be uint8, got {frames.dtype}; convert with np.uint8.")
    if frames.shape[0] == 0:
        raise MediaError(f"cannot write {path}: no frames given.")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise MediaError(
            f"cannot write {path}: H.264 yuv420p needs even width and height, got {width}x{height}; "
            "crop or pad the frames to even sizes."
        )
    return frames


def _check_audio(audio: np.ndarray, path: Path) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise MediaError(f"cannot write {path}: audio must be mono (N,), got shape {audio.shape}; average channels.")
    if not np.issubdtype(audio.dtype, np.floating):
        raise MediaError(f"cannot write {path}: audio must be float in [-1, 1], got {audio.dtype}.")
    if not np.all(np.isfinite(audio)):
        raise MediaError(f"cannot write {path}: audio holds NaN or inf values.")
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


class VideoWriter:
    """A streaming H.264 yuv420p mp4 writer: frames go to the encoder as they arrive, in any batches.

    ``with VideoWriter(path, audio=speech) as writer: writer.write(frames)`` — each `write` takes
    ``(T, H, W, 3)`` RGB uint8 frames of one size, encodes them at once and muxes the speech
    (mono AAC, given whole up front) up to the end of the frames written so far, so neither the
    frames nor the encoded packets pile up in memory. Video frame i has pts i / fps and audio
    sample j has pts j / audio_sr, both from 0. The file is written to a temporary name in the
    destination folder and renamed over ``path`` only when the block ends without an error;
    on an error (or with no frames written) nothing is left behind.

    ``fragmented=True`` (`fada generate --stream`) writes ``path`` itself, as a fragmented mp4 that
    grows while it is written: every `write` starts with a keyframe, so each call (one clip) becomes
    one fragment, which the muxer puts on disk when the next one starts (the last at the end). A
    player can open the file at any time and plays the clips written so far; x264 runs without
    look-ahead (``tune=zerolatency``) so no frame waits for later ones. A failure deletes the file.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = VIDEO_FPS,
        audio: np.ndarray | None = None,
        audio_sr: int = AUDIO_SR,
        crf: int = 18,
        fragmented: bool = False,
    ):
        self.path = Path(path)
        self.fragmented = fragmented
        if self.path.suffix.lower() not in WRITE_VIDEO_SUFFIXES:
            raise MediaError(f"cannot write {self.path}: only .mp4 video output is supported; use a .mp4 name.")
        self.audio = None if audio is None else _check_audio(audio, self.path)
        self.rate = Fraction(fps).limit_denominator(1001)
        if self.rate <= 0:
            raise MediaError(f"cannot write {self.path}: fps must be positive, got {fps}.")
        self.audio_sr = int(audio_sr)
        self.crf = crf
        self.frames_written = 0  # video frames encoded so far
        self._audio_done = 0  # audio samples encoded so far
        self._closed = False  # set once a fragmented file is complete
        self._stack: ExitStack | None = None
        self._container = self._video = self._sound = None

    def __enter__(self) -> VideoWriter:
        self._stack = ExitStack()
        if self.fragmented:
            self.path.unlink(missing_ok=True)
            self._stack.callback(self._delete_unless_closed)
            self._tmp = self.path
        else:
            self._tmp = self._stack.enter_context(_atomic_target(self.path))
        return self

    def _delete_unless_closed(self) -> None:
        if not self._closed:
            self.path.unlink(missing_ok=True)

    def _open(self, width: int, height: int) -> None:
        options = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
        container = av.open(str(self._tmp), mode="w", format="mp4", options=options if self.fragmented else {})
        self._container = self._stack.enter_context(container)
        self._video = self._container.add_stream("libx264", rate=self.rate)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = 1 / self.rate
        self._video.options = {"crf": str(self.crf), "preset": "medium"}
        if self.fragmented:
            self._video.options = {**self._video.options, "tune": "zerolatency"}
        if self.audio is not None:
            self._sound = self._container.add_stream("aac", rate=self.audio_sr, layout="mono")
            self._sound.codec_context.time_base = Fraction(1, self.audio_sr)

    def write(self, frames: np.ndarray) -> None:
        """Encode ``(T, H, W, 3)`` RGB uint8 frames now, then the speech up to their end."""
        if self._stack is None:
            raise MediaError(f"cannot write {self.path}: use the VideoWriter inside a `with` block.")
        frames = _check_frames(frames, self.path)
        if self._container is None:
            self._open(frames.shape[2], frames.shape[1])
        elif (frames.shape[2], frames.shape[1]) != (self._video.width, self._video.height):
            raise MediaError(
                f"cannot write {self.path}: frames of {frames.shape[2]}x{frames.shape[1]} after "
                f"{self._video.width}x{self._video.height} ones; every frame of a video must have one size."
            )
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = self.frames_written
            if self.fragmented and i == 0:  # each write opens a fragment
                frame.pict_type = av.video.frame.PictureType.I
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
        # a fragmented file muxes the speech 0.5 s ahead, so no fragment waits for the AAC encoder's delay
        lead_s = 0.5 if self.fragmented else 0.0
        self._write_audio(until=math.floor((self.frames_written / self.rate + lead_s) * self.audio_sr))

    def _write_audio(self, until: int | None) -> None:
        """Encode the speech's whole AAC frames that end by sample ``until`` (None: all that is left)."""
        if self._sound is None:
            return
        chunk = self._sound.codec_context.frame_size or 1024  # AAC takes exactly frame_size samples per frame
        while self._audio_done < len(self.audio) and (until is None or self._audio_done + chunk <= until):
            start = self._audio_done
            samples = self.audio[None, start : start + chunk]  # (1, ≤ chunk)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = self.audio_sr
            frame.pts = start  # time base 1 / audio_sr: audio starts at 0 with video
            self._container.mux(self._sound.encode(frame))
            self._audio_done += samples.shape[1]

    def __exit__(self, exc_type, exc, traceback) -> bool:
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                if self._container is None:
                    raise MediaError(f"cannot write {self.path}: no frames given.")
                self._container.mux(self._video.encode())  # flush the encoder's look-ahead
                self._write_audio(until=None)
                if self._sound is not None:
                    self._container.mux(self._sound.encode())
            except Exception:
                if not stack.__exit__(*sys.exc_info()):  # closes and deletes the temporary file
                    raise
                return False
            self._closed = True  # a fragmented file stays
        return stack.__exit__(exc_type, exc, traceback)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = VIDEO_FPS,
    audio: np.ndarray | None = None,
    audio_sr: int = AUDIO_SR,
    crf: int = 18,
) -> None:
    """Write ``(T, H, W, 3)`` RGB uint8 frames as H.264 yuv420p mp4, with mono AAC audio if given.

    Video frame i has pts i / fps and audio sample j has pts j / audio_sr, both from 0, so the
    file's audio is aligned to frame 0. The file appears atomically. `VideoWriter` in one go.
    """
    writer = VideoWriter(path, fps=fps, audio=audio, audio_sr=audio_sr, crf=crf)
    frames = _check_frames(frames, writer.path)
    with writer:
        writer.write(frames)


def write_audio(path: str | Path, audio: np.ndarray, sr: int = AUDIO_SR) -> None:
    """Write mono float audio as wav (32-bit float) or flac (24-bit), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_AUDIO_FORMATS:
        raise MediaError(f"cannot write {path}: audio output must be .wav or .flac.")
    audio = _check_audio(audio, path)
    file_format, subtype = WRITE_AUDIO_FORMATS[suffix]
    with _atomic_target(path) as tmp:
        sf.write(str(tmp), audio, int(sr), format=file_format, subtype=subtype)
