"""pipelines.media: mp4 round trip, audio/video alignment through AAC, audio reading, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipelines.errors import MediaError
from pipelines.media import (
    AUDIO_SR,
    VideoWriter,
    _atomic_target,
    iter_video,
    probe_video,
    read_audio,
    read_video,
    write_audio,
    write_video,
)

FPS = 25


def ramp_frames(n: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Flat frames whose brightness encodes the frame index (i * 6), so order survives H.264."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)  # (T, H, W, 3)
    frames[..., 0] = (np.arange(n) * 6 % 256)[:, None, None]
    frames[..., 1] = 128
    return frames


def click_audio(seconds: float, click_frame: int, sr: int = AUDIO_SR) -> np.ndarray:
    """Silence with one short click starting at the time of video frame ``click_frame``."""
    audio = np.zeros(round(seconds * sr), dtype=np.float32)
    start = round(click_frame / FPS * sr)
    audio[start : start + sr // 500] = 0.8  # 2 ms click
    return audio


def click_time(audio: np.ndarray, sr: int = AUDIO_SR) -> float:
    """Time (s) where the click starts: first sample above half the peak."""
    return float(np.argmax(np.abs(audio) > 0.5 * np.abs(audio).max()) / sr)


def sine(freq: float, seconds: float, sr: int, channels: int) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)  # (n, C)


def peak_frequency(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 40-frame mp4 at 25 fps with a click at frame 17 (AAC, 16 kHz)."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_video(path, ramp_frames(40), fps=FPS, audio=click_audio(1.6, click_frame=17))
    return path


def test_round_trip_frames_fps_and_duration(clip):
    frames, fps = read_video(clip)
    assert frames.shape == (40, 32, 48, 3)
    assert frames.dtype == np.uint8
    assert fps == pytest.approx(25.0)
    # frame order and content survive lossy coding
    np.testing.assert_allclose(frames[:, 16, 24, 0].astype(float), np.arange(40) * 6, atol=6)
    info = probe_video(clip)
    assert (info.n_frames, info.width, info.height, info.has_audio, info.audio_sr) == (40, 48, 32, True, 16000)
    assert info.duration_s == pytest.approx(1.6)
    audio = read_audio(clip)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / AUDIO_SR - 1.6) <= 1 / FPS  # within one frame, AAC padding trimmed


def test_click_stays_aligned_with_its_frame(clip):
    audio = read_audio(clip)
    assert abs(click_time(audio) - 17 / FPS) <= 0.040  # AAC priming must not shift audio


def test_click_alignment_at_48k_source_rate(tmp_path):
    path = tmp_path / "clip48.mp4"
    write_video(path, ramp_frames(30), audio=click_audio(1.2, click_frame=9, sr=48_000), audio_sr=48_000)
    assert probe_video(path).audio_sr == 48_000
    audio = read_audio(path)  # resampled to 16 kHz
    assert abs(len(audio) / AUDIO_SR - 1.2) <= 1 / FPS
    assert abs(click_time(audio) - 9 / FPS) <= 0.040


def test_windows_select_frames_and_samples(clip):
    frames, _ = read_video(clip, start_s=0.4, end_s=0.8)
    assert frames.shape[0] == 10
    np.testing.assert_allclose(frames[:, 16, 24, 0].astype(float), np.arange(10, 20) * 6, atol=6)
    assert len(list(iter_video(clip, start_s=1.2))) == 10
    audio = read_audio(clip, start_s=0.5, end_s=1.0)
    assert len(audio) == 8000
    assert abs(click_time(audio) - (17 / FPS - 0.5)) <= 0.040


def test_window_late_in_a_longer_file_seeks_correctly(tmp_path):
    path = tmp_path / "long.mp4"
    write_video(path, ramp_frames(150, height=16, width=16), audio=click_audio(6.0, click_frame=110))
    audio = read_audio(path, start_s=4.0, end_s=5.0)  # past the seek threshold
    assert len(audio) == AUDIO_SR
    assert abs(click_time(audio) - (110 / FPS - 4.0)) <= 0.040
    frames, _ = read_video(path, start_s=4.0, end_s=4.4)
    np.testing.assert_allclose(frames[:, 8, 8, 0].astype(float), np.arange(100, 110) * 6 % 256, atol=6)
    with pytest.raises(MediaError, match="no samples between 7.0 s and 8.0 s"):
        read_audio(path, start_s=7.0, end_s=8.0)


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video(path, ramp_frames(5))
    info = probe_video(path)
    assert not info.has_audio and info.audio_sr is None and info.n_frames == 5
    with pytest.raises(MediaError, match="no audio track"):
        read_audio(path)


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "sr", "channels"),
    [
        (".wav", "WAV", "PCM_16", 44_100, 2),
        (".flac", "FLAC", "PCM_16", 22_050, 1),
        (".ogg", "OGG", "VORBIS", 48_000, 2),
    ],
)
def test_read_audio_resamples_to_16k_mono(tmp_path, suffix, fmt, subtype, sr, channels):
    path = tmp_path / f"tone{suffix}"
    sf.write(path, sine(440.0, 1.0, sr, channels), sr, format=fmt, subtype=subtype)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - AUDIO_SR) <= 2
    assert peak_frequency(audio, AUDIO_SR) == pytest.approx(440.0, abs=2.0)
    # channels are averaged: amplitudes 0.5 * (c + 1) / C averaged over C channels
    expected_amplitude = 0.5 * np.mean([(c + 1) / channels for c in range(channels)])
    assert np.abs(audio[2000:-2000]).max() == pytest.approx(expected_amplitude, rel=0.05)
    window = read_audio(path, start_s=0.25, end_s=0.75)
    assert abs(len(window) - AUDIO_SR // 2) <= 2
    with pytest.raises(MediaError, match="no samples between 2 s and 3 s"):
        read_audio(path, start_s=2, end_s=3)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_write_audio_round_trip(tmp_path, suffix):
    audio = sine(300.0, 0.5, AUDIO_SR, 1)[:, 0]
    path = tmp_path / f"out{suffix}"
    write_audio(path, audio)
    back = read_audio(path)
    np.testing.assert_allclose(back, audio, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]


def test_missing_file_raises_media_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    for call in (probe_video, read_video, read_audio):
        with pytest.raises(MediaError, match="not found: .*nope.mp4"):
            call(missing)
    with pytest.raises(MediaError, match="not found"):
        read_audio(tmp_path / "nope.wav")


def test_corrupt_files_raise_media_error(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for call in (probe_video, read_video, read_audio):
        with pytest.raises(MediaError, match="corrupt.mp4"):
            call(corrupt)
    bad_wav = tmp_path / "bad.wav"
    bad_wav.write_bytes(b"RIFF0000WAVEjunk" * 10)
    with pytest.raises(MediaError, match="bad.wav"):
        read_audio(bad_wav)


def test_write_rejects_bad_input_and_keeps_existing_file(tmp_path):
    path = tmp_path / "keep.mp4"
    write_video(path, ramp_frames(3))
    before = path.read_bytes()
    with pytest.raises(MediaError, match="even width and height, got 47x32"):
        write_video(path, ramp_frames(3, width=47))
    with pytest.raises(MediaError, match="uint8"):
        write_video(path, ramp_frames(3).astype(np.float32))
    with pytest.raises(MediaError, match=r"mono \(N,\)"):
        write_video(path, ramp_frames(3), audio=np.zeros((100, 2), np.float32))
    with pytest.raises(MediaError, match=r"\.mp4"):
        write_video(tmp_path / "x.avi", ramp_frames(3))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_atomic_target_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), _atomic_target(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("encoder died")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_video_writer_streams_batches_into_the_same_video(tmp_path):
    """Frames written in uneven batches decode like one `write_video`, the click still on frame 17."""
    frames, audio = ramp_frames(40), click_audio(1.6, click_frame=17)
    write_video(tmp_path / "whole.mp4", frames, audio=audio)
    with VideoWriter(tmp_path / "streamed.mp4", audio=audio) as writer:
        for start, stop in ((0, 4), (4, 5), (5, 23), (23, 40)):
            writer.write(frames[start:stop])
            assert writer.frames_written == stop
            assert not (tmp_path / "streamed.mp4").exists()  # the file appears only when the block ends
    whole, streamed = read_video(tmp_path / "whole.mp4")[0], read_video(tmp_path / "streamed.mp4")[0]
    assert np.array_equal(whole, streamed)
    sound = read_audio(tmp_path / "streamed.mp4")
    np.testing.assert_allclose(sound, read_audio(tmp_path / "whole.mp4"), atol=1e-6)
    assert abs(click_time(sound) - 17 / FPS) <= 0.040
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4", "whole.mp4"]


def test_video_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="model died"), VideoWriter(path, audio=click_audio(1.0, 3)) as writer:
        writer.write(ramp_frames(8))
        raise RuntimeError("model died")
    with pytest.raises(MediaError, match="16x16 after 48x32"), VideoWriter(path) as writer:
        writer.write(ramp_frames(2))
        writer.write(ramp_frames(2, height=16, width=16))
    with pytest.raises(MediaError, match="no frames given"), VideoWriter(path):
        pass
    assert list(tmp_path.iterdir()) == []
