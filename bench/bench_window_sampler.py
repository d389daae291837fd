"""Cost of one key of the training data stream (`data.WindowSampler.key`) against the number of clips.

Before (the implementation up to issue 21, reproduced here as `legacy_key`): every key drew a fresh
permutation of every clip of its epoch, O(n) per key. After: the epoch's permutation is drawn once
and kept, so a key is O(1) — its cost is the per-position sample seed. Both give the same keys
(checked here on the keys timed, and in tests/test_data.py).

For each n: µs per key over a run of consecutive keys, the fastest of several equal blocks (the
machine is shared; its load average is recorded); after: the first key of the epoch, which draws the
permutation, is timed on its own. One process, one thread.

    python bench/bench_window_sampler.py            # writes bench/results/window_sampler.{json,md}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipelines.data import WindowSampler  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
SEED = 0


def legacy_key(seed: int, n_clips: int, position: int) -> tuple[int, int]:
    """`WindowSampler.key` as it was: a permutation of every clip for every key."""
    epoch, offset = divmod(position, n_clips)
    order = np.random.default_rng([seed, epoch]).permutation(n_clips)
    sample_seed = int(np.random.SeedSequence([seed, position]).generate_state(1)[0])
    return int(order[offset]), sample_seed


def per_key_us(fn, positions, blocks: int = 1) -> tuple[float, list]:
    """µs per key of ``fn`` over ``positions`` (the fastest of ``blocks`` equal blocks: the machine is shared)."""
    positions, keys, best = list(positions), [], float("inf")
    size = max(1, len(positions) // blocks)
    for first in range(0, len(positions), size):
        block = positions[first : first + size]
        began = time.perf_counter()
        keys += [fn(p) for p in block]
        best = min(best, (time.perf_counter() - began) / len(block) * 1e6)
    return best, keys


def main() -> None:
    rows = []
    for n in SIZES:
        start = 3 * n + n // 2  # mid-epoch 3: the position a long run is at
        legacy_count = max(5, min(200, 2_000_000 // n))
        before_us, before_keys = per_key_us(
            lambda p, n=n: legacy_key(SEED, n, p), range(start, start + legacy_count), 5
        )
        sampler = WindowSampler(n, SEED)
        first_us, first_keys = per_key_us(sampler.key, [start])
        count = 20_000
        after_us, after_keys = per_key_us(sampler.key, range(start + 1, start + 1 + count), 10)
        same = (first_keys + after_keys)[:legacy_count] == before_keys
        rows.append({"clips": n, "before_us_per_key": before_us, "before_keys_timed": legacy_count,
                     "after_first_key_of_epoch_us": first_us, "after_us_per_key": after_us,
                     "after_keys_timed": count, "same_keys": same})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench" / "results" / "window_sampler"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# WindowSampler: µs per key (bench/bench_window_sampler.py)",
        "",
        f"One process, one thread, numpy {np.__version__}, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (the fastest of 5–10 blocks of keys); keys from mid-epoch 3 on. Before: a "
        "permutation of every clip per key (the code up to issue 21). After: one permutation per epoch, kept; its "
        "first key pays for it.",
        "",
        "| clips | before µs / key | after µs / key | after: first key of the epoch (µs) | same keys |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clips']:,} | {r['before_us_per_key']:,.0f} | {r['after_us_per_key']:.1f} | "
            f"{r['after_first_key_of_epoch_us']:,.0f} | {'yes' if r['same_keys'] else 'NO'} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
