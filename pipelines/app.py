"""`fada serve`: a Gradio page over one loaded `FadaPipeline`.

Portrait upload, speech upload or microphone recording, the sampler controls of the checkpoint's
mode (steps, CFG scales, seed, face crop), the video and its stats. Progress is streamed to the
page clip by clip; the video appears when its last clip is written.

Safety: the server binds to 127.0.0.1 unless told otherwise; uploads are limited in size
(`ServeConfig.max_upload_mb`); nothing is served from disk but Gradio's upload/output cache (no
``allowed_paths``: the checkpoint, the working folder and the rest of the disk are refused); a bad
input shows the CLI's one-line ``Error: …`` in the page, with the server's upload paths replaced by
the uploaded file's name.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines import media
from pipelines.errors import FadaError, UsageError
from pipelines.extras import require
from pipelines.generate import GenerateConfig
from pipelines.pipeline import FadaPipeline, speech_array

ERROR_ID = "fada-error"  # elem_id of the error line (the browser test reads it)
STATUS_ID = "fada-status"  # elem_id of the progress line
VIDEO_ID = "fada-video"  # elem_id of the video


@dataclass(frozen=True)
class ServeConfig:
    """Where the page listens and what it accepts."""

    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes the page to the network
    port: int = 7860  # TCP port
    max_upload_mb: float = 20.0  # largest portrait or speech upload
    max_audio_s: float = 60.0  # longest speech generated (longer recordings are an error)


def one_line_error(error: FadaError, uploads: dict[str, str | None]) -> str:
    """The CLI's ``Error: …`` line, each upload's server path replaced by its file name."""
    message = " ".join(str(error).split())
    for path in uploads.values():
        if path:
            message = message.replace(str(path), Path(path).name)
    return f"Error: {message}"


def generate_for_page(pipe: FadaPipeline, image: str | None, audio: str | None, steps: int, cfg_audio: float,
                      cfg_ref: float, seed: int, crop: bool, out_dir: Path,
                      max_audio_s: float = 60.0) -> Iterator[tuple[str | None, str, str, str]]:  # fmt: skip
    """Yield (video path or None, stats JSON, status line, error line) as the generation goes on."""
    uploads = {"portrait": image, "speech": audio}
    try:
        if not image:
            raise UsageError("no portrait given; upload a PNG or JPEG image with a face.")
        if not audio:
            raise UsageError("no speech given; upload an audio file or record one with the microphone.")
        speech = speech_array(audio)
        seconds = len(speech) / media.AUDIO_SR
        if seconds > max_audio_s:
            raise UsageError(f"speech lasts {seconds:.1f} s, longer than this page's {max_audio_s:g} s; trim it.")
        config = GenerateConfig(steps=int(steps), cfg_audio=float(cfg_audio), cfg_ref=float(cfg_ref), seed=int(seed),
                                crop=bool(crop))  # fmt: skip
        out = out_dir / f"fada-{uuid.uuid4().hex[:12]}.mp4"
        run = pipe.write_clips(image, (speech, media.AUDIO_SR), out, config, quiet=True)
        for written, total in run:
            yield None, "", f"{written}/{total} frames generated", ""
        stats = asdict(run.stats)
        stats.pop("checkpoint"), stats.pop("video")  # server paths stay on the server
        yield str(out), json.dumps(stats, indent=2), f"done: {run.stats.frames} frames, {run.stats.seconds:.1f} s", ""
    except FadaError as error:
        yield None, "", "", one_line_error(error, uploads)


def build_app(pipe: FadaPipeline, config: ServeConfig = ServeConfig()):
    """The Gradio Blocks page over ``pipe`` (launch it with `serve`)."""
    gr = require("gradio", "`fada serve`")

    strategy, info = pipe.strategy, pipe.info
    out_dir = Path(tempfile.mkdtemp(prefix="fada-serve-"))
    min_steps = 1 if info.stage == "teacher" else 4  # PeRFlow needs a step per window (K = 4)
    cfg_used = pipe.model.cfg_conditioning is not None or strategy.branches == 3
    title = f"fada: {info.stage} ({info.mode}), {strategy.name}, NFE {strategy.default_steps * strategy.branches}/clip"
    with gr.Blocks(title="fada") as page:
        gr.Markdown(f"## {title}\nUpload a portrait and speech (or record it), then Generate.")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Portrait (PNG/JPEG)", type="filepath", elem_id="fada-portrait")
                audio = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                 elem_id="fada-speech")  # fmt: skip
                steps = gr.Slider(min_steps, 50, value=strategy.default_steps, step=1, label="Sampler steps")
                cfg_audio = gr.Slider(0, 12, value=6.5, step=0.5, label="Audio CFG scale", interactive=cfg_used)
                cfg_ref = gr.Slider(0, 6, value=strategy.default_cfg_ref, step=0.5, label="Reference CFG scale",
                                    interactive=cfg_used)  # fmt: skip
                seed = gr.Number(0, precision=0, label="Seed")
                crop = gr.Checkbox(True, label="Detect and crop the face")
                button = gr.Button("Generate", variant="primary", elem_id="fada-generate")
            with gr.Column():
                error = gr.Markdown("", elem_id=ERROR_ID)
                status = gr.Markdown("", elem_id=STATUS_ID)
                video = gr.Video(label="Video", elem_id=VIDEO_ID, autoplay=False)
                stats = gr.Code(label="Stats (OUT.json)", language="json")

        def run(image, audio, steps, cfg_audio, cfg_ref, seed, crop):
            for video_path, stats_json, status_line, error_line in generate_for_page(
                pipe, image, audio, steps, cfg_audio, cfg_ref, seed, crop, out_dir, config.max_audio_s
            ):
                yield video_path, stats_json, status_line, f"**{error_line}**" if error_line else ""

        button.click(run, [image, audio, steps, cfg_audio, cfg_ref, seed, crop], [video, stats, status, error])
    return page


def serve(pipe: FadaPipeline, config: ServeConfig = ServeConfig(), block: bool = True):
    """Launch the page on ``config.host:config.port``; returns the Gradio app when ``block`` is False."""
    page = build_app(pipe, config)
    page.queue(default_concurrency_limit=1)  # one generation at a time: the model is shared
    page.launch(
        server_name=config.host,
        server_port=config.port,
        max_file_size=f"{config.max_upload_mb:g}mb",
        allowed_paths=[],
        prevent_thread_lock=not block,
        show_error=False,
        quiet=True,
    )
    return page
