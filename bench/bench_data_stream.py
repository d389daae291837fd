"""Peak memory and speed of the training data against the number of clips in the manifest.

Writes 20 real 1-s mp4 clips (64 px, noise + a tone) and manifests of 20, 400 and 2000 rows (the
rows reuse the 20 files; the dataset decodes each row on its own), then, in a fresh process per
case, builds the dataset and draws 100 windows (25 batches of 4, demo preset: 64 px, F = 8):

- ``streamed``: `data.WindowDataset`, clips decoded when drawn (LRU 256 MB);
- ``cached``: the same windows read from a latent cache (`--cache-latents`; pixel space: frames),
  up to 400 rows (filling it decodes every row once);
- ``whole`` (optional, ``--baseline PATH``): the pre-streaming ``ClipDataset`` of the fada tree at
  PATH, which decoded every clip at start.

Peak RSS is the child's ``ru_maxrss``. Results: ``bench/results/data_stream.md``.

    python bench/bench_data_stream.py [--baseline /path/to/older/fada]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = (20, 400, 2000)
BATCHES, BATCH_SIZE = 25, 4

CHILD = r"""
import json, resource, sys, time
import torch
from pipelines.model_config import get_preset
import pipelines.data as data
manifest, kind, cache_dir = sys.argv[1], sys.argv[2], sys.argv[3]
config = get_preset("demo")
imported_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
began = time.perf_counter()
if kind == "whole":
    dataset = data.ClipDataset(manifest, config, ("A",), quiet=True)
else:
    dataset = data.WindowDataset(manifest, config)
    if kind == "cached":
        from pipelines.latent_cache import cache_key, fill_cache, open_cache
        cache = open_cache(cache_dir, cache_key(manifest, config, None), create=True)
        fill_cache(cache, dataset, None, torch.device("cpu"), quiet=True)
        dataset.cache = cache
ready = time.perf_counter()
sampler = data.WindowSampler(len(dataset), seed=0)
for _ in range(__BATCHES__):
    batch = dataset.batch(sampler.take(__BATCH_SIZE__))
done = time.perf_counter()
rate = __BATCHES__ * __BATCH_SIZE__ / (done - ready)
print(json.dumps({"imported_mb": imported_mb, "start_s": ready - began, "windows_per_s": rate,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""".replace("__BATCHES__", str(BATCHES)).replace("__BATCH_SIZE__", str(BATCH_SIZE))


def write_data(folder: Path) -> dict[int, Path]:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pandas as pd

    from pipelines.manifest import write_manifest
    from pipelines.media import write_video

    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        video = rng.integers(0, 256, (25, 64, 64, 3), dtype=np.uint8)
        audio = (0.1 * np.sin(np.arange(25 * 640) * (0.05 + 0.01 * i))).astype(np.float32)
        write_video(folder / "clips" / f"c{i}.mp4", video, 25.0, audio)
        rows.append({"clip_id": f"c{i}", "video_path": f"clips/c{i}.mp4", "fps": 25.0, "n_frames": 25,
                     "width": 64, "height": 64, "audio_sr": 16000, "duration_s": 1.0, "source": "bench",
                     "start_s": 0.0, "end_s": 1.0, "tier": "A"})  # fmt: skip
    base = pd.DataFrame(rows)
    manifests = {}
    for count in ROWS:
        copies = [base.assign(clip_id=base["clip_id"] + f"-{c}") for c in range(count // 20)]
        manifests[count] = folder / f"rows{count}.parquet"
        write_manifest(pd.concat(copies, ignore_index=True), manifests[count], "bench")
    return manifests


def run_child(tree: Path, manifest: Path, kind: str, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(manifest), kind, str(cache)], cwd=tree,
                          capture_output=True, text=True, env=env, timeout=1800)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="an older fada tree whose ClipDataset decodes everything")
    args = parser.parse_args()
    began = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        manifests = write_data(Path(tmp))
        for count, manifest in manifests.items():
            cases = [("streamed", ROOT)]
            if count <= 400:  # filling a cache of 2000 rows, or decoding them whole: minutes, 0.6–1.3 GB
                cases.append(("cached", ROOT))
                if args.baseline is not None:
                    cases.append(("whole", args.baseline))
            for kind, tree in cases:
                cache = Path(tmp) / f"cache{count}"
                if kind == "cached":
                    run_child(tree, manifest, kind, cache)  # fill the cache first: time the reads only
                result = run_child(tree, manifest, kind, cache)
                results.append({"rows": count, "data": kind, **result})
                print(results[-1], flush=True)
    lines = [
        "# Training data: peak memory against the manifest's size",
        "",
        f"`python bench/bench_data_stream.py{' --baseline …' if args.baseline else ''}` "
        f"({time.perf_counter() - began:.0f} s). Demo preset (64 px, F = 8), 1-s clips, {BATCHES}×{BATCH_SIZE} "
        "windows drawn in one process (no workers), one CPU thread; peak RSS of a fresh process (torch "
        "and fada's imports are most of it: see the column after imports). `whole`: the pre-streaming "
        "ClipDataset, which decoded every clip at start.",
        "",
        "| rows | data | start (s) | windows/s | peak RSS after imports (MB) | peak RSS (MB) | growth (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        growth = r["peak_rss_mb"] - r["imported_mb"]
        lines.append(f"| {r['rows']} | {r['data']} | {r['start_s']:.2f} | {r['windows_per_s']:.1f} | "
                     f"{r['imported_mb']:.0f} | {r['peak_rss_mb']:.0f} | {growth:.0f} |")  # fmt: skip
    lines += [
        "",
        "How to read it: `streamed` holds the manifest's rows and an LRU of the clips it decoded (at most",
        "256 MB per process); with 100 windows drawn it holds at most 100 clips, whatever the rows, while",
        "`whole` holds every row decoded. `windows/s` of `streamed` is the cost of decoding a clip per window",
        "(in DataLoader workers on a GPU machine; on the CPU the demo set fits the LRU and is decoded once);",
        "`cached` reads only each window's frames from safetensors.",
    ]
    out = ROOT / "bench" / "results" / "data_stream.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
