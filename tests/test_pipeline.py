"""`FadaPipeline` on the tiny preset: same frames as `fada generate`, streaming, inputs, `--stream` files."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import skimage.data
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines import FadaPipeline, media
from pipelines.checkpoint import save_checkpoint
from pipelines.errors import MediaError, UsageError
from pipelines.generate import GenerateConfig
from pipelines.model import FadaModel
from pipelines.model_config import get_preset

runner = CliRunner()
AUDIO_S = 1.0  # 25 frames: 7 tiny clips of F = 4, the last one trimmed to 1 frame


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("tiny"))
    config = {"model": model.config.to_dict()}
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "teacher", stage="teacher", mode="teacher", config=config,
        components=model.components(), step=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The astronaut's face and 1 s of 16 kHz modulated tone (as a file and as samples)."""
    folder = tmp_path_factory.mktemp("inputs")
    portrait = folder / "portrait.png"
    Image.fromarray(skimage.data.astronaut()).resize((320, 320)).save(portrait)
    t = np.arange(int(AUDIO_S * 16_000)) / 16_000
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    speech = folder / "speech.wav"
    sf.write(speech, voice, 16_000, subtype="FLOAT")
    return portrait, speech, voice


@pytest.fixture(scope="module")
def pipe(teacher):
    return FadaPipeline.from_checkpoint(teacher, device="cpu")


def test_pipeline_frames_equal_fada_generate(pipe, teacher, inputs, tmp_path, monkeypatch):
    portrait, speech, _ = inputs
    written = []  # the frames `fada generate` hands to the mp4 encoder

    class SpyWriter(media.VideoWriter):
        def write(self, frames):
            written.append(frames.copy())
            super().write(frames)

    monkeypatch.setattr(media, "VideoWriter", SpyWriter)
    args = ["generate", "--checkpoint", str(teacher), "--image", str(portrait), "--audio", str(speech)]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "talk.mp4"), "--steps", "1", "--seed", "3", "--quiet"])
    assert result.exit_code == 0, result.output

    out = pipe(portrait, speech, steps=1, seed=3)
    assert out.frames.dtype == np.uint8 and out.frames.shape == (25, 32, 32, 3)
    assert np.array_equal(out.frames, np.concatenate(written))
    assert out.stats.video is None and out.stats.frames == 25 and out.stats.nfe == 3 and out.stats.seed == 3
    assert 0 < out.stats.first_clip_seconds <= out.stats.seconds
    assert out.audio.dtype == np.float32 and len(out.audio) == 16_000
    assert not np.array_equal(out.frames, pipe(portrait, speech, steps=1, seed=4).frames)  # the seed matters


def test_pil_image_array_and_sample_pairs_are_the_same_inputs(pipe, inputs):
    portrait, speech, voice = inputs
    reference = pipe(portrait, speech, steps=1).frames
    image = Image.open(portrait)
    stereo_44k = media.resample_audio(voice, 16_000, 44_100)
    assert np.array_equal(pipe(image, (voice, 16_000), steps=1).frames, reference)
    assert np.array_equal(pipe(np.asarray(image.convert("RGB")), (voice, 16_000), steps=1).frames, reference)
    other_rate = pipe(image, (np.stack([stereo_44k, stereo_44k], axis=1), 44_100), steps=1)  # resampled: close
    assert other_rate.frames.shape == reference.shape
    with pytest.raises(UsageError, match=r"portrait array of shape \(4, 4\)"):
        pipe(np.zeros((4, 4), np.uint8), speech)
    with pytest.raises(MediaError, match="shorter than one video frame"):
        pipe(portrait, (np.zeros(100, np.float32), 16_000))
    with pytest.raises(MediaError, match="no face found in the portrait"):
        pipe(np.full((64, 64, 3), 128, np.uint8), speech)


def test_stream_yields_clips_before_the_audio_ends_and_equals_the_whole_call(pipe, inputs):
    portrait, speech, voice = inputs
    whole = pipe(portrait, speech, steps=1, seed=1)
    consumed = []  # chunks handed out so far, read when each clip arrives

    def microphone():
        for start in range(0, len(voice), 1_600):  # 0.1 s chunks
            consumed.append(start)
            yield voice[start : start + 1_600]

    run = pipe.stream(portrait, microphone(), steps=1, seed=1)
    clips, pieces = [], []
    for frames in run:
        clips.append((len(frames), len(consumed)))
        pieces.append(frames)
    streamed = np.concatenate(pieces)
    chunks = len(consumed)
    assert chunks == 10
    # clip 1 (frames 0-3) needs audio through frame 4 + window 2 + context 1 = 7 frames = 0.28 s: 3 chunks
    assert clips[0] == (4, 3)
    assert sum(1 for _, seen in clips if seen < chunks) >= 4  # most clips came out while audio was still arriving
    assert [n for n, _ in clips] == [4] * 6 + [1]
    assert np.array_equal(streamed, whole.frames)
    assert run.stats.frames == 25 and np.array_equal(run.audio, whole.audio)
    assert 0 < run.stats.first_clip_seconds < run.stats.seconds
    with pytest.raises(UsageError, match="iterable of audio chunks"):
        pipe.stream(portrait, speech)


def test_generate_stream_writes_a_growing_fragmented_mp4(teacher, inputs, tmp_path, monkeypatch):
    portrait, speech, _ = inputs
    out = tmp_path / "live.mp4"
    readable = []  # frames a player could decode from the file when each clip reached the writer

    def decodable(path) -> int:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))

    class SpyWriter(media.VideoWriter):
        def write(self, frames):
            readable.append(decodable(out) if out.exists() else 0)
            super().write(frames)

    monkeypatch.setattr(media, "VideoWriter", SpyWriter)
    args = ["generate", "--checkpoint", str(teacher), "--image", str(portrait), "--audio", str(speech)]
    result = runner.invoke(app, [*args, "-o", str(out), "--steps", "1", "--stream", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["streamed"] is True and stats["frames"] == 25 and stats["first_clip_seconds"] > 0
    # one fragment per clip, on disk once the next clip starts: when clip k+2 reaches the writer, a player
    # can decode clips 1..k from the growing file
    assert readable[:6] == [0, 0, 4, 8, 12, 16]
    assert media.probe_video(out).n_frames == 25 and decodable(out) == 25
    with av.open(str(out)) as container:
        assert container.streams.audio[0].duration > 0
    assert json.loads(out.with_suffix(".json").read_text()) == stats


def test_failed_stream_leaves_no_file(pipe, inputs, tmp_path, monkeypatch):
    portrait, speech, _ = inputs
    calls = []
    original = FadaModel.decode_latents

    def failing(self, latents):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory in clip 3")
        return original(self, latents)

    monkeypatch.setattr(FadaModel, "decode_latents", failing)
    with pytest.raises(RuntimeError, match="clip 3"):
        pipe.write(portrait, speech, tmp_path / "live.mp4", GenerateConfig(steps=1), stream=True, quiet=True)
    assert list(tmp_path.iterdir()) == []
