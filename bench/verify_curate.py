"""Verify `fada curate` against the demo dataset's ground truth: the four figures of issue 4.

Run on purpose (not a test)::

    python bench/verify_curate.py [--data DIR] [--clips 24 --size 128 --seconds 3 --seed 0]

Makes the demo dataset in a temporary folder (or uses --data DIR from `fada demo-data`), curates
its clips with the default thresholds in one worker, joins the curated manifest to truth.parquet
by source clip, and reports, with the counts behind each:

1. sync: share of clips with true |offset| ≤ 8 whose ``sync_proxy_offset`` is within ±1 frame of
   the true offset (target ≥ 0.9);
2. motion: Spearman between ``motion_head`` and the true ``motion_level`` (target ≥ 0.8);
3. sharpness: Spearman between ``sharpness`` and −``blur_sigma`` (target ≥ 0.8);
4. tiers: share of clean clips curated into tier A (target ≥ 0.9) and of defective ones (≤ 0.1).

Prints a per-clip table and the figures; writes bench/results/curate_verify.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from pipelines.curate import CurateConfig, run_curate
from pipelines.demo_data import MARKER_FILE, DemoDataConfig, generate_demo_data

RESULTS = Path(__file__).parent / "results"
MAX_SYNC_OFFSET = 8  # clips with a larger true |offset| are not counted in the sync figure
TARGETS = {  # issue 4: figure -> (comparison, value)
    "sync_within_1_frame": (">=", 0.9),
    "spearman_motion_head_vs_motion_level": (">=", 0.8),
    "spearman_sharpness_vs_minus_blur_sigma": (">=", 0.8),
    "clean_in_tier_a": (">=", 0.9),
    "defective_in_tier_a": ("<=", 0.1),
}


def join_truth(manifest: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per demo clip: its truth columns and its curated row (curated columns end ``_curated``)."""
    manifest = manifest.assign(truth_id=manifest["source"].map(lambda s: Path(s).stem))
    if manifest["truth_id"].duplicated().any():
        raise SystemExit("curate split a demo clip into several clips; the join by source needs one each.")
    return truth.merge(manifest, left_on="clip_id", right_on="truth_id", how="left", suffixes=("", "_curated"))


def spearman(scores: pd.Series, truth: pd.Series) -> dict:
    """Spearman rho over clips where the score is finite, and how many clips that is."""
    ok = np.isfinite(scores.to_numpy(dtype=float))
    rho = float(spearmanr(scores[ok], truth[ok])[0]) if ok.sum() >= 3 else float("nan")
    return {"value": rho, "clips": int(ok.sum()), "clips_without_score": int((~ok).sum())}


def share(hits: pd.Series) -> dict:
    """Share of True in ``hits`` with its numerator and denominator."""
    count, total = int(hits.sum()), len(hits)
    return {"value": count / total if total else float("nan"), "count": count, "clips": total}


def figures(both: pd.DataFrame) -> dict:
    """The issue-4 figures from the joined table (see the module docstring)."""
    near = both[both["offset_frames"].abs() <= MAX_SYNC_OFFSET]
    in_a = both["tier_curated"] == "A"
    result = {
        "sync_within_1_frame": share((near["sync_proxy_offset"] - near["offset_frames"]).abs() <= 1),
        "spearman_motion_head_vs_motion_level": spearman(both["motion_head"], both["motion_level"]),
        "spearman_sharpness_vs_minus_blur_sigma": spearman(both["sharpness"], -both["blur_sigma"]),
        "clean_in_tier_a": share(in_a[both["clean"]]),
        "defective_in_tier_a": share(in_a[~both["clean"]]),
    }
    for name, (op, target) in TARGETS.items():
        value = result[name]["value"]
        result[name]["target"] = f"{op} {target:g}"
        result[name]["met"] = bool(value >= target if op == ">=" else value <= target)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing `fada demo-data` folder (else one is made)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "demo"
            config = DemoDataConfig(clips=args.clips, size=args.size, seconds=args.seconds, seed=args.seed)
            generate_demo_data(data, config, quiet=True)
        dataset = json.loads((data / MARKER_FILE).read_text())["config"]
        summary = run_curate(
            [data / "clips"], Path(tmp) / "curated", CurateConfig(size=dataset["size"], workers=1), quiet=True
        )
        both = join_truth(pd.read_parquet(summary.manifest), pd.read_parquet(data / "truth.parquet"))
    columns = ["clip_id", "clean", "tier", "tier_curated", "offset_frames", "sync_proxy_offset", "motion_level"]
    columns += ["motion_head", "blur_sigma", "noise_std", "sharpness", "tier_reason"]
    print(both[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    result = {"figures": figures(both), "dataset": dataset}
    print(json.dumps(result["figures"], indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "curate_verify.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
