"""Where `fada curate` spends its time: CPU and wall seconds per stage, one worker, in process.

    python bench/profile_curate.py [--clips 8] [--size 128] [--seconds 3] [--label before]

Generates the demo dataset (or uses --data DIR), curates it with ``workers=1`` while timing each
stage by wrapping the functions that do it, and writes bench/results/curate_profile_LABEL.json
and .md. Stages do not nest; "other" is the rest of the run (pandas, Parquet, tiering, Python).
CPU seconds (`time.process_time`) are the figure to compare on a shared machine; wall seconds
also count the time other processes held the cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from filters import background, image_quality, motion, sync
from pipelines import curate, faces, media
from pipelines.curate import CurateConfig, run_curate
from pipelines.demo_data import DemoDataConfig, generate_demo_data

RESULTS = Path(__file__).parent / "results"
TOTALS: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # stage -> [cpu s, wall s, calls]


def timed(stage: str, function):
    """``function`` wrapped to add its CPU and wall time to ``TOTALS[stage]``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            entry = TOTALS[stage]
            entry[0] += time.process_time() - cpu
            entry[1] += time.perf_counter() - wall
            entry[2] += 1

    return wrapper


# (module or class, attribute, stage): the functions each stage is made of
STAGES = [
    (curate, "shot_cuts", "decode (shot cuts)"),
    (media, "read_video", "decode (clip frames)"),
    (media, "read_audio", "decode (clip audio)"),
    (media, "probe_video", "decode (probe)"),
    (faces, "detect_faces", "face detection"),
    (faces.FaceMeshTracker, "landmarks", "face mesh"),
    (faces.FaceMeshTracker, "__init__", "face mesh"),
    (faces, "person_mask", "segmentation (background)"),
    (background, "background_change", "background measure"),
    (motion, "head_motion", "head motion (ECC)"),
    (sync, "_proxy", "sync search (proxy)"),
    (image_quality, "laplacian_sharpness", "sharpness"),
    (image_quality, "brisque", "brisque (iqa)"),
    (image_quality, "learned_iqa_problem", "iqa check (pyiqa import)"),
    (media, "write_video", "encode"),
    (curate.shutil, "copyfile", "encode"),
    (curate, "write_manifest", "manifest writes"),
    (curate, "write_part", "manifest writes"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing `fada demo-data` folder")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--label", default="now", help="suffix of the result files")
    args = parser.parse_args()
    for owner, name, stage in STAGES:
        if hasattr(owner, name):
            setattr(owner, name, timed(stage, getattr(owner, name)))
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "demo"
            generate_demo_data(data, DemoDataConfig(clips=args.clips, size=args.size, seconds=args.seconds), quiet=True)
        TOTALS.clear()
        cpu, wall = time.process_time(), time.perf_counter()
        summary = run_curate([data / "clips"], Path(tmp) / "curated", CurateConfig(size=args.size), quiet=True)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stages = {stage: {"cpu_s": c, "wall_s": w, "calls": n} for stage, (c, w, n) in TOTALS.items()}
    stages["other"] = {
        "cpu_s": cpu - sum(s["cpu_s"] for s in stages.values()),
        "wall_s": wall - sum(s["wall_s"] for s in stages.values()),
        "calls": 0,
    }
    result = {
        "label": args.label,
        "input_px": args.size,
        "video_seconds": summary.video_seconds,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "video_s_per_cpu_s": summary.video_seconds / cpu,
        "video_s_per_wall_s": summary.video_seconds / wall,
        "tiers": summary.tiers,
        "stages": stages,
        "dataset": {"clips": args.clips, "size": args.size, "seconds": args.seconds, "workers": 1},
    }
    lines = [
        f"# fada curate profile ({args.label}): {args.clips} demo clips at {args.size} px, 1 worker",
        "",
        f"video {summary.video_seconds:.1f} s; CPU {cpu:.1f} s; wall {wall:.1f} s; "
        f"**{result['video_s_per_cpu_s']:.2f} video s per CPU s**, {result['video_s_per_wall_s']:.2f} per wall s",
        "",
        "| stage | CPU s | share | wall s | calls |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage, s in sorted(stages.items(), key=lambda kv: -kv[1]["cpu_s"]):
        lines.append(f"| {stage} | {s['cpu_s']:.2f} | {s['cpu_s'] / cpu:.0%} | {s['wall_s']:.2f} | {s['calls']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"curate_profile_{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"curate_profile_{args.label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
