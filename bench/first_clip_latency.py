"""Benchmark: first-clip latency (audio in → first frames out) of teacher, balanced and fast.

The same random-init (seeded) teacher and its two untrained students as `bench_modes` (a latency
does not depend on the weights), each loaded once with `FadaPipeline.from_checkpoint`, then two
latencies per mode after a warm-up video:

- ``whole``: `FadaPipeline.write(..., stream=True)` (what `fada generate --stream` runs) on the
  first second of the speech (a teacher's whole 4 s takes minutes, clip 1 the same): from the
  call (inputs read, face cropped, …) to clip 1's frames (``first_clip_seconds`` in OUT.json);
- ``live``: `FadaPipeline.stream` fed the same speech as 0.1-s chunks paced in real time, as a
  microphone would: from the arrival of the chunk that completes clip 1's audio (its F frames + the
  look-ahead of its feature window) to clip 1's frames. The stream stops after clip 1.

    python bench/first_clip_latency.py [--presets demo] [--device auto] [--dtype fp32] [--threads N]

Writes bench/results/first_clip_latency.json and bench/results/first_clip_latency.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import machine_info, make_inputs, make_teacher, parse_bench_arguments  # noqa: E402
from bench_modes import ORDER, make_student  # noqa: E402

from pipelines import media  # noqa: E402
from pipelines.generate import GenerateConfig  # noqa: E402
from pipelines.pipeline import FadaPipeline  # noqa: E402
from pipelines.progress import console  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_S = 0.1  # microphone chunk length


def live_chunks(speech, pace: bool = True):
    """The speech as 0.1-s chunks, each handed out when it would have been recorded."""
    step = int(CHUNK_S * media.AUDIO_SR)
    began = time.perf_counter()
    for i, start in enumerate(range(0, len(speech), step)):
        if pace:
            time.sleep(max(0.0, began + (i + 1) * CHUNK_S - time.perf_counter()))
        yield speech[start : start + step]


def measure(preset: str, device: str, dtype: str, folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    portrait, speech_file = make_inputs(folder)
    speech = media.read_audio(speech_file)
    speech_file = folder / "speech_1s.wav"
    media.write_audio(speech_file, speech[: media.AUDIO_SR])
    teacher = make_teacher(preset, folder)
    checkpoints = {"teacher": teacher, **{m: make_student(teacher, m, folder) for m in ("balanced", "fast")}}
    rows = []
    for mode in ORDER:
        pipe = FadaPipeline.from_checkpoint(checkpoints[mode], device=device, dtype=dtype)
        warm_up = GenerateConfig(steps=1 if mode == "teacher" else None)  # PeRFlow needs ≥ 4 steps
        pipe.write(portrait, speech_file, folder / "warm-up.mp4", warm_up, quiet=True)
        whole = pipe.write(portrait, speech_file, folder / f"{mode}.mp4", GenerateConfig(), stream=True, quiet=True)
        run = pipe.stream(portrait, live_chunks(speech))
        began = time.perf_counter()
        next(iter(run))  # clip 1 only
        live_first_s = time.perf_counter() - began
        lookahead = pipe.audio_encoder.window + 1  # mel: ±window frames + 1 frame of STFT context
        rows.append(
            {
                "preset": preset,
                "mode": mode,
                "sampler": whole.sampler,
                "nfe_per_clip": whole.nfe,
                "frames_per_clip": whole.frames_per_clip,
                "load_s": round(pipe.load_seconds, 2),
                "whole_first_clip_s": round(whole.first_clip_seconds, 2),
                "whole_video_s": round(whole.seconds, 2),
                "audio_s": whole.audio_seconds,
                "live_audio_needed_s": (whole.frames_per_clip + lookahead) / media.VIDEO_FPS,
                "live_wall_to_first_clip_s": round(live_first_s, 2),
                "device": whole.device,
            }
        )
        console.print(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    args, presets = parse_bench_arguments(__doc__, argv if argv is not None else sys.argv[1:] or ["--presets", "demo"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            rows += measure(preset, args.device, args.dtype, Path(tmp) / preset)
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine_info(rows), "rows": rows}
    (RESULTS / "first_clip_latency.json").write_text(json.dumps(payload, indent=2) + "\n")
    columns = list(rows[0])
    table = Table(title="first-clip latency (audio in → first frames out)")
    lines = ["# first-clip latency: audio in → first frames out", "", f"Machine: {payload['machine']}.", "",
             "whole: `fada generate --stream` on a 1-s file, call → clip 1. live: 0.1-s chunks in real time, "
             "stream → clip 1 (includes waiting live_audio_needed_s for clip 1's audio).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]  # fmt: skip
    for name in columns:
        table.add_column(name)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    (RESULTS / "first_clip_latency.md").write_text("\n".join(lines) + "\n")
    console.print(table)


if __name__ == "__main__":
    main()
