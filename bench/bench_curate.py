"""Benchmark `fada curate` on the demo dataset: throughput and agreement with the ground truth.

    python bench/bench_curate.py [--clips 24] [--size 128] [--seconds 3] [--workers 1] [--name curate]

Generates the demo dataset in a temporary folder (or uses --data DIR from `fada demo-data`),
curates it, and writes bench/results/NAME.json and NAME.md (NAME defaults to ``curate``):

- throughput: seconds of video scored per wall-clock second, and per worker; with one worker
  also per CPU second of this process (`os.times`, children included), the figure to compare
  on a machine shared with other jobs;
- sync proxy: share of clips with true |offset| ≤ 8 whose proxy offset is within ±1 frame;
- Spearman of motion_head vs the true motion level, of sharpness vs −blur;
- tier A: share of clean clips in A, share of defective clips in A.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from pipelines.curate import CurateConfig, run_curate
from pipelines.demo_data import DemoDataConfig, generate_demo_data

RESULTS = Path(__file__).parent / "results"


def rank_correlation(a: pd.Series, b: pd.Series) -> float:
    return float(spearmanr(a, b, nan_policy="omit")[0])


def agreement(manifest: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """The verification figures of issue 4, from a curated manifest and the demo truth table."""
    manifest = manifest.assign(truth_id=manifest["source"].str.extract(r"(demo_\d+)\.mp4$")[0])
    both = truth.merge(manifest, left_on="clip_id", right_on="truth_id", suffixes=("", "_curated"))
    near = both[both["offset_frames"].abs() <= 8]
    return {
        "clips": len(both),
        "sync_within_1_frame": float(((near["sync_proxy_offset"] - near["offset_frames"]).abs() <= 1).mean()),
        "spearman_motion_head_vs_level": rank_correlation(both["motion_head"], both["motion_level"]),
        "spearman_sharpness_vs_minus_blur": rank_correlation(both["sharpness"], -both["blur_sigma"]),
        "clean_in_A": float((both.loc[both["clean"], "tier_curated"] == "A").mean()),
        "defective_in_A": float((both.loc[~both["clean"], "tier_curated"] == "A").mean()),
        "tier_matches_truth": float((both["tier"] == both["tier_curated"]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an existing `fada demo-data` folder")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--name", default="curate", help="stem of the result files in bench/results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "demo"
            generate_demo_data(data, DemoDataConfig(clips=args.clips, size=args.size, seconds=args.seconds), quiet=True)
        config = CurateConfig(size=args.size, workers=args.workers)
        before = os.times()
        summary = run_curate([data / "clips"], Path(tmp) / "curated", config, quiet=True)
        after = os.times()
        kinds = ("user", "system", "children_user", "children_system")
        cpu = sum(getattr(after, k) - getattr(before, k) for k in kinds)
        manifest = pd.read_parquet(summary.manifest)
        figures = agreement(manifest, pd.read_parquet(data / "truth.parquet"))
    result = {
        "video_seconds": summary.video_seconds,
        "wall_seconds": summary.wall_seconds,
        "workers": args.workers,
        "video_s_per_wall_s": summary.seconds_per_second,
        "video_s_per_wall_s_per_worker": summary.seconds_per_second / args.workers,
        "cpu_seconds": cpu,
        "video_s_per_cpu_s": summary.video_seconds / cpu,
        "tiers": summary.tiers,
        **figures,
        "dataset": {"clips": args.clips, "size": args.size, "seconds": args.seconds},
        "machine": f"{platform.machine()} {platform.processor()} python {platform.python_version()}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# fada curate on the demo dataset", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.items()]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
