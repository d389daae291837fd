"""`fada curate` over a few hundred sources: the local engine against Ray on this machine.

    python bench/bench_curate_scale.py [--sources 240] [--distinct 8] [--cpus 2] [--reference-clip FILE]

Makes ``--distinct`` demo talking heads (96 px, 2.2 s) and copies them under ``--sources`` names
(each copy is its own source: its id hashes its path), curates them once with ``--engine local
--workers CPUS`` and once with ``--engine ray`` on a local Ray of CPUS CPUs, and records per
engine the wall time, the peak memory of the whole process tree (sampled every 0.2 s with psutil;
for Ray it includes the raylet and GCS) and of the largest single worker, and whether the two
manifests are identical. Then it sizes a 1,460-hour run on a cluster from the measured figures
(see `cluster_estimate`). Writes bench/results/curate_scale.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from pipelines import media
from pipelines.curate import CurateConfig, run_curate
from pipelines.demo_data import DemoDataConfig, generate_demo_data

RESULTS = Path(__file__).parent / "results"
PAPER_HOURS = 1460.0  # hours of internet video the paper filters into tiers A and B
CLIP_SECONDS = 10.0  # --max-seconds: the longest clip, so at least hours × 3600 / 10 clips
NODE_CPUS = 16  # CPUs per node of the cluster sketched


class MemorySampler(threading.Thread):
    """Peak RSS of this process and all its descendants (sum), and of the largest single child."""

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every_s, self.peak_total, self.peak_child = every_s, 0, 0
        self._done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._done.is_set():
            sizes = []
            for process in [me, *me.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:  # a process that ended between listing and reading
                    sizes.append(0)
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_child = max(self.peak_child, max(sizes[1:], default=0))
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_engine(sources: Path, out: Path, engine: str, cpus: int) -> tuple[dict, pd.DataFrame]:
    config = CurateConfig(size=64, workers=cpus, engine=engine)
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    summary = run_curate([sources], out, config, quiet=True)
    wall = time.perf_counter() - started
    sampler.stop()
    manifest = pd.read_parquet(summary.manifest)
    figures = {
        "engine": engine,
        "cpus": cpus,
        "rows": len(manifest),
        "tiers": summary.tiers,
        "video_seconds": summary.video_seconds,
        "wall_seconds": wall,
        "video_s_per_wall_s": summary.video_seconds / wall,
        "peak_rss_tree_mib": sampler.peak_total / 2**20,
        "peak_rss_one_worker_mib": sampler.peak_child / 2**20,
        "clip_bytes": folder_bytes(out / "clips"),
        "manifest_bytes": (out / "manifest.parquet").stat().st_size,
    }
    return figures, manifest


def cluster_estimate(local: dict, reference: dict) -> dict:
    """How a 1,460-hour curation divides across a cluster, from the figures measured here.

    One task per source (the unit of work; a long source could be split into segments at shot
    cuts); its memory is the worker's peak RSS here plus its frames at the source resolution;
    bytes written are the clip mp4s at the reference clip's bitrate plus the manifest.
    """
    video_s = PAPER_HOURS * 3600
    clips = math.ceil(video_s / CLIP_SECONDS)
    cpu_s = video_s / reference["video_s_per_cpu_s"]
    bytes_per_row = local["manifest_bytes"] / local["rows"]
    estimate = {
        "video_seconds": video_s,
        "clips_at_least": clips,
        "cpu_seconds_per_video_second_512px": 1 / reference["video_s_per_cpu_s"],
        "cpu_hours": cpu_s / 3600,
        "wall_hours_on_100_nodes_of_16_cpus": cpu_s / 3600 / (100 * NODE_CPUS),
        "clip_bytes_per_video_second_512px": reference["clip_bytes_per_second"],
        "clip_terabytes": video_s * reference["clip_bytes_per_second"] / 1e12,
        "manifest_bytes_per_row": bytes_per_row,
        "manifest_megabytes": clips * bytes_per_row / 1e6,
        "worker_rss_mib_here": local["peak_rss_one_worker_mib"],
        "frames_mib_per_10s_clip_1080p": 250 * 1920 * 1080 * 3 / 2**20,
    }
    for minutes in (1, 5, 30):
        estimate[f"tasks_if_sources_average_{minutes}_min"] = math.ceil(video_s / (minutes * 60))
    return estimate


def reference_figures(clip: Path | None) -> dict:
    """Throughput per CPU second at 512 px (bench/results/curate_profile_after_512.json) and a 512 px clip's bytes/s."""
    profile = json.loads((RESULTS / "curate_profile_after_512.json").read_text())
    bytes_per_second = float("nan")
    if clip is not None:
        bytes_per_second = clip.stat().st_size / media.probe_video(clip).duration_s
    return {"video_s_per_cpu_s": profile["video_s_per_cpu_s"], "clip_bytes_per_second": bytes_per_second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=240)
    parser.add_argument("--distinct", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--reference-clip", type=Path, help="a 512 px clip mp4 (e.g. from `fada demo-data --size 512`)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_demo_data(tmp / "demo", DemoDataConfig(clips=args.distinct, size=96, seconds=2.2, seed=2), quiet=True)
        originals = sorted((tmp / "demo" / "clips").glob("*.mp4"))
        for i in range(args.sources):
            target = tmp / "sources" / f"{i // 100:02d}" / f"talk_{i:04d}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(originals[i % len(originals)], target)
        runs, manifests = [], []
        for engine in ("local", "ray"):
            figures, manifest = run_engine(tmp / "sources", tmp / f"out_{engine}", engine, args.cpus)
            runs.append(figures)
            manifests.append(manifest)
    same = manifests[0].equals(manifests[1])
    estimate = cluster_estimate(runs[0], reference_figures(args.reference_clip))
    result = {"sources": args.sources, "same_manifest": same, "runs": runs, "cluster_1460_hours": estimate}
    lines = [
        f"# fada curate: {args.sources} sources (96 px, 2.2 s), local vs ray, {args.cpus} CPUs", "",
        f"same manifest: **{same}**", "",
        "| engine | rows | wall s | video s / wall s | peak RSS, tree (MiB) | peak RSS, one worker (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r['engine']} | {r['rows']} | {r['wall_seconds']:.1f} | {r['video_s_per_wall_s']:.2f} | "
            f"{r['peak_rss_tree_mib']:.0f} | {r['peak_rss_one_worker_mib']:.0f} |"
        )
    lines += ["", "## 1,460 hours on a cluster (from these figures)", "", "| figure | value |", "|---|---:|"]
    lines += [f"| {k} | {v:,.3f} |" if isinstance(v, float) else f"| {k} | {v:,} |" for k, v in estimate.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "curate_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "curate_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
