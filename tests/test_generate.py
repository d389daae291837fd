"""`fada generate` end to end on the tiny preset: real checkpoint folder, real mp4, real CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.data
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines import media
from pipelines.checkpoint import save_checkpoint
from pipelines.distill import build_student_from_teacher
from pipelines.errors import MediaError
from pipelines.generate import read_portrait
from pipelines.model import FadaModel
from pipelines.model_config import get_preset

runner = CliRunner()
AUDIO_S = 1.32  # 33 frames: 9 tiny clips of F = 4, the last one padded then trimmed
SHORT_S = 0.16  # 4 frames: one tiny clip


def _save(model: FadaModel, out_dir, stage: str):
    config = {"model": model.config.to_dict()}
    return save_checkpoint(out_dir, stage=stage, mode=stage, config=config, components=model.components(), step=0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    return _save(FadaModel.from_config(get_preset("tiny")), tmp_path_factory.mktemp("ckpt") / "teacher", "teacher")


def _write_speech(path, seconds: float, sr: int = 44_100, stereo: bool = True):
    t = np.arange(int(round(seconds * sr))) / sr
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    sf.write(path, np.stack([voice, voice], axis=1) if stereo else voice, sr)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A real face (the astronaut), 1.32 s and 0.16 s of 44.1 kHz stereo speech (generate resamples)."""
    folder = tmp_path_factory.mktemp("inputs")
    portrait = folder / "portrait.png"
    Image.fromarray(skimage.data.astronaut()).resize((320, 320)).save(portrait)
    return portrait, _write_speech(folder / "speech.wav", AUDIO_S), _write_speech(folder / "short.wav", SHORT_S)


@pytest.fixture
def loaded_models(monkeypatch):
    """The `FadaModel`s that generate loads, to read their call counters afterwards."""
    models = []
    original = FadaModel.from_checkpoint.__func__

    def keep(cls, *args, **kwargs):
        models.append(original(cls, *args, **kwargs))
        return models[-1]

    monkeypatch.setattr(FadaModel, "from_checkpoint", classmethod(keep))
    return models


def _generate(teacher, portrait, speech, out, *extra):
    args = ["generate", "--checkpoint", str(teacher), "--image", str(portrait), "--audio", str(speech)]
    return runner.invoke(app, [*args, "-o", str(out), "--device", "cpu", "--quiet", *extra])


def test_generate_end_to_end(teacher, inputs, tmp_path, loaded_models):
    portrait, speech, _ = inputs
    out = tmp_path / "new" / "talk.mp4"  # a missing folder is created
    result = _generate(teacher, portrait, speech, out, "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "new" / "talk.json").read_text())
    assert json.loads(result.stdout) == stats
    expected_frames = round(AUDIO_S * 25)
    info = media.probe_video(out)
    size = get_preset("tiny").sample_size
    assert (info.n_frames, info.width, info.height, info.fps, info.has_audio) == (expected_frames, size, size, 25, True)
    written_audio = media.read_audio(out)
    assert abs(len(written_audio) / media.AUDIO_SR - AUDIO_S) <= 1 / 25
    assert (stats["frames"], stats["steps"], stats["nfe"]) == (expected_frames, 2, 6)
    assert (stats["frames_per_clip"], stats["motion_frames"]) == (4, 2)  # the checkpoint's model config
    assert stats["clips"] == math.ceil(expected_frames / 4) == 9
    assert stats["nfe_total"] == 9 * 6
    assert stats["stage"] == "teacher" and stats["checkpoint"] == str(teacher)
    assert stats["peak_memory_source"] == "process_peak_rss" and stats["peak_memory_mb"] > 0
    assert (stats["cfg_audio"], stats["cfg_ref"], stats["fps"], stats["device"]) == (6.5, 2.5, 25, "cpu")
    assert stats["seconds"] > 0 and stats["audio_seconds"] == pytest.approx(AUDIO_S, abs=1e-4)
    (model,) = loaded_models
    assert model.reference_net_calls == 9  # once per clip, not once per denoising step
    assert model.denoising_net_calls == 9 * 2  # the three CFG branches share one forward per step


def test_teacher_default_is_25_ddim_steps_75_nfe(teacher, inputs, tmp_path, loaded_models):
    portrait, _, short = inputs
    out = tmp_path / "talk.mp4"
    result = _generate(teacher, portrait, short, out)
    assert result.exit_code == 0, result.output
    stats = json.loads(out.with_suffix(".json").read_text())
    assert (stats["nfe"], stats["steps"], stats["clips"], stats["frames"]) == (75, 25, 1, 4)
    (model,) = loaded_models
    assert (model.nfe_counter, model.denoising_net_calls, model.reference_net_calls) == (75, 25, 1)
    assert "nfe 75 per clip" in result.stdout


def test_clip_options_and_any_portrait_mode(teacher, inputs, tmp_path):
    gray_rgba = tmp_path / "portrait.png"  # grayscale + alpha: still finds the face
    Image.open(inputs[0]).convert("LA").save(gray_rgba)
    speech = _write_speech(tmp_path / "mono.wav", 0.4, sr=8_000, stereo=False)  # 10 frames
    out = tmp_path / "talk.mp4"
    clip_options = ["--frames-per-clip", "8", "--motion-frames", "3"]
    result = _generate(teacher, gray_rgba, speech, out, "--steps", "1", *clip_options)
    assert result.exit_code == 0, result.output
    stats = json.loads(out.with_suffix(".json").read_text())
    assert (stats["frames_per_clip"], stats["motion_frames"], stats["clips"], stats["frames"]) == (8, 3, 2, 10)
    assert media.probe_video(out).n_frames == 10
    bad = _generate(teacher, gray_rgba, speech, out, "--frames-per-clip", "4", "--motion-frames", "5")
    assert bad.exit_code == 2 and "--motion-frames 5 exceeds --frames-per-clip 4" in bad.stderr


def test_same_seed_same_video_other_seed_differs(teacher, inputs, tmp_path):
    portrait, _, short = inputs
    videos = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.mp4"
        assert _generate(teacher, portrait, short, out, "--steps", "1", "--seed", seed).exit_code == 0
        videos[name] = media.read_video(out)[0]
    assert np.array_equal(videos["a"], videos["b"])
    assert not np.array_equal(videos["a"], videos["c"])


def test_silent_speech_is_allowed_with_a_warning(teacher, inputs, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(1600, dtype=np.float32), 16_000)  # 0.1 s → round(2.5) = 2 frames
    out = tmp_path / "talk.mp4"
    args = ["generate", "--checkpoint", str(teacher), "--image", str(inputs[0]), "--audio", str(silent)]
    result = runner.invoke(app, [*args, "-o", str(out), "--device", "cpu", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert "is silent; the mouth will not follow any sound" in " ".join(result.stderr.split())
    assert media.probe_video(out).n_frames == 2


def _assert_clean_error(result, out, message, exit_code=1):
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not list(out.parent.glob("*.mp4*"))


def test_portrait_without_a_face_is_an_error(teacher, inputs, tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(gray)
    out = tmp_path / "talk.mp4"
    _assert_clean_error(_generate(teacher, gray, inputs[2], out), out, f"no face found in {gray}; use a frontal")
    # --no-crop skips detection and generates from the centre square
    assert _generate(teacher, gray, inputs[2], out, "--no-crop", "--steps", "1").exit_code == 0
    assert out.exists()


def test_empty_or_too_short_audio_is_an_error(teacher, inputs, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000)
    out = tmp_path / "talk.mp4"
    _assert_clean_error(_generate(teacher, inputs[0], empty, out), out, f"{empty} holds no samples at all")
    blip = _write_speech(tmp_path / "blip.wav", 0.01)  # 10 ms: less than one 40 ms video frame
    _assert_clean_error(_generate(teacher, inputs[0], blip, out), out, "lasts 0.010 s, shorter than one video frame")


def test_student_checkpoint_is_an_error(inputs, tmp_path):
    torch.manual_seed(0)
    student = _save(FadaModel.from_config(get_preset("tiny")), tmp_path / "student", "student")
    out = tmp_path / "talk.mp4"
    _assert_clean_error(_generate(student, inputs[0], inputs[2], out), out, "is a student checkpoint")


def test_output_must_be_mp4(teacher, inputs, tmp_path):
    out = tmp_path / "talk.avi"
    _assert_clean_error(_generate(teacher, inputs[0], inputs[2], out), out, "must be an .mp4 file name", exit_code=2)


def test_read_portrait_any_mode(tmp_path):
    rgba = np.zeros((6, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:3, :, 3] = 255  # top half opaque red, bottom half transparent → white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = read_portrait(tmp_path / "rgba.png")
    assert rgb.shape == (6, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[-1, 0].tolist() == [255, 255, 255]
    Image.fromarray(np.full((5, 7), 90, dtype=np.uint8), "L").save(tmp_path / "gray.png")
    assert read_portrait(tmp_path / "gray.png")[2, 3].tolist() == [90, 90, 90]
    wide = np.zeros((5, 7), dtype=np.uint16)
    wide[0, 0] = 4000  # 16-bit grayscale is rescaled to 8 bit
    Image.fromarray(wide).save(tmp_path / "gray16.png")
    assert read_portrait(tmp_path / "gray16.png")[0, 0].tolist() == [255, 255, 255]
    Image.fromarray(np.full((5, 7, 3), 40, dtype=np.uint8)).convert("P").save(tmp_path / "palette.png")
    assert read_portrait(tmp_path / "palette.png").shape == (5, 7, 3)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(MediaError, match="cannot read portrait"):
        read_portrait(tmp_path / "notes.png")


def _student(teacher, out_dir, mode: str, conditioning: str):
    """A fresh student of the teacher (equal to it at init) saved as stage 'student', mode fast|balanced."""
    model = build_student_from_teacher(FadaModel.from_checkpoint(teacher), conditioning)
    config = {"model": model.config.to_dict(), "train": {"windows": 4}}
    return save_checkpoint(out_dir, stage="student", mode=mode, config=config, components=model.components(), step=0)


@pytest.mark.parametrize(
    ("mode", "conditioning", "nfe", "cfg_ref", "sampler"),
    [("balanced", "none", 18, 2.5, "perflow-multi-cfg"), ("fast", "tokens", 6, 2.0, "perflow-cfg-tokens")],
)
def test_student_nfe_from_instrumented_runs(
    teacher, inputs, tmp_path, loaded_models, mode, conditioning, nfe, cfg_ref, sampler
):
    student = _student(teacher, tmp_path / mode, mode, conditioning)
    loaded_models.clear()  # the teacher loaded to build the student
    out = tmp_path / "talk.mp4"
    result = _generate(student, inputs[0], inputs[2], out, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["stage"], stats["mode"], stats["sampler"], stats["steps"]) == ("student", mode, sampler, 6)
    assert (stats["nfe"], stats["cfg_audio"], stats["cfg_ref"]) == (nfe, 6.5, cfg_ref)  # 2.0 with CFG distillation
    (model,) = loaded_models
    assert (model.nfe_counter, model.denoising_net_calls, model.reference_net_calls) == (nfe, 6, 1)


def test_student_steps_option(teacher, inputs, tmp_path, loaded_models):
    student = _student(teacher, tmp_path / "fast", "fast", "tokens")
    loaded_models.clear()
    out = tmp_path / "talk.mp4"
    result = _generate(student, inputs[0], inputs[2], out, "--steps", "9", "--cfg-ref", "1.5", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["steps"], stats["nfe"], stats["cfg_ref"]) == (9, 9, 1.5)
    bad_out = tmp_path / "bad" / "talk.mp4"
    bad = _generate(student, inputs[0], inputs[2], bad_out, "--steps", "3")
    _assert_clean_error(bad, bad_out, "--steps 3 is not valid for 4 PeRFlow windows", exit_code=2)


def test_image_stage_teacher_generates_with_reference_guidance_only(inputs, tmp_path):
    portrait, _, short = inputs
    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("tiny"))
    config = {"model": model.config.to_dict(), "stages": [{"stage": "image", "steps": 0}]}
    image_only = save_checkpoint(tmp_path / "image", stage="teacher", mode="teacher", config=config,
                                 components=model.components(), step=0)  # fmt: skip
    joint = _save(model, tmp_path / "joint", "teacher")
    result = _generate(image_only, portrait, short, tmp_path / "image.mp4", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "image.json").read_text())["cfg_audio"] == 0.0
    result = _generate(joint, portrait, short, tmp_path / "joint.mp4", "--steps", "2", "--cfg-audio", "0")
    assert result.exit_code == 0, result.output
    assert np.array_equal(media.read_video(tmp_path / "image.mp4")[0], media.read_video(tmp_path / "joint.mp4")[0])


# --- long speech with bounded memory ------------------------------------------------------------

LONG_S = 4.36  # 109 frames: 28 clips of F = 4


def test_long_speech_streams_clip_by_clip_to_the_writer(teacher, inputs, tmp_path, monkeypatch):
    """Each clip reaches the mp4 writer as soon as it is decoded, never more than F frames at a time."""
    portrait, _, _ = inputs
    long_speech = _write_speech(tmp_path / "long.wav", LONG_S)
    decoded, writes = [], []  # clips decoded so far; (frames written, clips decoded at that moment)
    original_decode = FadaModel.decode_latents

    def counting_decode(self, latents):
        decoded.append(latents.shape[1])
        return original_decode(self, latents)

    class SpyWriter(media.VideoWriter):
        def write(self, frames):
            writes.append((len(frames), len(decoded)))
            super().write(frames)

    monkeypatch.setattr(FadaModel, "decode_latents", counting_decode)
    monkeypatch.setattr(media, "VideoWriter", SpyWriter)
    out = tmp_path / "long.mp4"
    result = _generate(teacher, portrait, long_speech, out, "--steps", "1")
    assert result.exit_code == 0, result.output
    expected = round(25 * LONG_S)
    assert media.probe_video(out).n_frames == expected == json.loads(out.with_suffix(".json").read_text())["frames"]
    clips = math.ceil(expected / 4)
    assert len(decoded) == clips and set(decoded) == {4}
    assert [clip for _, clip in writes] == list(range(1, clips + 1))  # clip k written before clip k + 1 is decoded
    assert [n for n, _ in writes] == [4] * (clips - 1) + [expected - 4 * (clips - 1)]  # one clip at a time, trimmed


def test_a_failure_mid_generation_leaves_no_file(teacher, inputs, tmp_path, monkeypatch):
    portrait, speech, _ = inputs
    original_decode = FadaModel.decode_latents
    calls = []

    def failing_decode(self, latents):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory in clip 3")
        return original_decode(self, latents)

    monkeypatch.setattr(FadaModel, "decode_latents", failing_decode)
    from pipelines.generate import GenerateConfig
    from pipelines.pipeline import generate

    with pytest.raises(RuntimeError, match="clip 3"):
        generate(teacher, portrait, speech, tmp_path / "talk.mp4", GenerateConfig(steps=1), device="cpu", quiet=True)
    assert list(tmp_path.iterdir()) == []  # neither the mp4 nor its temporary file nor the stats
