"""Does the mouth follow the speech in a `fada demo` run? Face-found rate and mouth r per mode.

For each mode of a finished demo folder (teacher, balanced, fast) it reads the held-out video the
demo generated from the held-out speech, generates the same portrait driven by silence of the same
length (same seed, steps and cropping as the demo), and reports:

- ``face_rate``: share of the speech-driven frames in which mediapipe finds a face (upscaled to 256);
- ``r_speech`` / ``r_silence``: Pearson r of the mouth darkness in a window fixed by the portrait
  (`mouth_region_evidence.py`) against the held-out speech's RMS per frame, for the speech-driven
  and the silence-driven video (the latter is chance level);
- the same r on the real held-out clip (the ceiling).

    python bench/demo_mouth_sync.py --demo demo_run --out bench/results/demo_mouth_sync.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from mouth_region_evidence import darkness_vs_speech, mouth_window
from PIL import Image

from pipelines.faces import face_found_rate
from pipelines.generate import GenerateConfig, crop_portrait
from pipelines.manifest import clip_path, read_manifest
from pipelines.media import AUDIO_SR, read_audio, read_video
from pipelines.pipeline import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `fada demo --out` folder")
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write (JSON beside it)")
    args = parser.parse_args(argv)

    summary = json.loads((args.demo / "demo_summary.json").read_text())
    held_out = args.demo / "curated" / "held_out.parquet"
    speech_clip = clip_path(held_out, read_manifest(held_out)["video_path"].iloc[0])
    portrait_path = args.demo / "data" / "identities" / f"{summary['held_out_identity']}.png"
    speech = read_audio(speech_clip)
    silence = args.demo / "bench_silence.wav"
    sf.write(silence, np.zeros_like(speech), AUDIO_SR)
    seed, teacher_steps = summary["config"]["seed"], summary["config"]["generate_steps"]

    rows = {}
    for mode, row in summary["modes"].items():
        driven, _ = read_video(Path(row["videos"][0]))
        portrait = np.asarray(Image.open(portrait_path).convert("RGB"))
        centre, eye = mouth_window(crop_portrait(portrait, driven.shape[1], False, 1.0, portrait_path))
        config = GenerateConfig(steps=teacher_steps if mode == "teacher" else None, seed=seed, crop=False)
        silent_mp4 = args.demo / "bench_silence" / f"{mode}.mp4"
        generate(row["checkpoint"], portrait_path, silence, silent_mp4, config, "cpu", "fp32", quiet=True)
        silent, _ = read_video(silent_mp4)
        rows[mode] = {
            "nfe": row["nfe"],
            "face_rate": face_found_rate(driven),
            "r_speech": darkness_vs_speech(driven, speech, centre, eye)["r_darkness_lag0"],
            "r_silence": darkness_vs_speech(silent, speech, centre, eye)["r_darkness_lag0"],
        }
    real, _ = read_video(speech_clip)
    size = driven.shape[1]  # the generated frames' side
    real = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in real])
    real_centre, real_eye = mouth_window(real[0])
    rows["real held-out clip"] = {
        "nfe": None,
        "face_rate": face_found_rate(real),
        "r_speech": darkness_vs_speech(real, speech, real_centre, real_eye)["r_darkness_lag0"],
        "r_silence": None,
    }

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    stages = summary["teacher"]["stages"]
    lines = [
        f"# `fada demo --minutes {summary['config']['minutes']:g}`: faces and mouth sync (`bench/demo_mouth_sync.py`)",
        "",
        f"Run of {summary['total_s'] / 60:.1f} min wall-clock (budget {summary['budget_s'] / 60:g} min); teacher "
        f"{stages['image']['steps']} image-stage + {stages['video']['steps']} video-stage steps; students "
        + ", ".join(f"{m} {s['steps']} steps" for m, s in summary["students"].items())
        + f". Held-out identity {summary['held_out_identity']}, held-out speech "
        f"({len(speech) / AUDIO_SR:.1f} s).",
        "",
        "| mode | NFE | face found | r speech | r silence |",
        "|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        lines.append(f"| {mode} | {fmt(r['nfe'], 'd')} | {r['face_rate']:.0%} | {fmt(r['r_speech'], '.2f')} | "
                     f"{fmt(r['r_silence'], '.2f')} |")  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"demo": str(args.demo), "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
