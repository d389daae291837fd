"""`fada serve`: a local web page (Gradio) over one loaded checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fada_cli.options import DeviceOption, DtypeOption
from pipelines.errors import UsageError


def command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Checkpoint folder: a teacher or a fast/balanced student.")
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the page to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port of the page.")] = 7860,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest upload accepted, in MB.")] = 20.0,
    max_audio_s: Annotated[float, typer.Option("--max-audio-s", help="Longest speech generated, in seconds.")] = 60.0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
) -> None:
    """Serve a web page that generates talking-portrait videos from one checkpoint, loaded once.

    Portrait upload, speech upload or microphone recording, the checkpoint's sampler controls
    (steps, CFG scales, seed, face crop), the video and its stats. Bound to 127.0.0.1 unless
    --host says otherwise; uploads are size-limited; bad inputs show the CLI's one-line error in
    the page; no file of the server is readable through it. Stop it with Ctrl-C.

    Example:

        fada serve --checkpoint runs/demo/student_fast --port 7860
    """
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port; use 1-65535, e.g. 7860.")
    if max_upload_mb <= 0 or max_audio_s <= 0:
        raise UsageError("--max-upload-mb and --max-audio-s must be positive; e.g. 20 and 60.")
    from pipelines.extras import require

    require("gradio", "`fada serve`")  # before the checkpoint is loaded
    from pipelines.app import ServeConfig, serve  # heavy: imported on use
    from pipelines.pipeline import FadaPipeline

    pipe = FadaPipeline.from_checkpoint(checkpoint, device=device, dtype=dtype)
    config = ServeConfig(host=host, port=port, max_upload_mb=max_upload_mb, max_audio_s=max_audio_s)
    typer.echo(f"fada serve: http://{host}:{port} ({pipe.info.stage} {pipe.info.mode}, {pipe.strategy.name})", err=True)
    serve(pipe, config)
