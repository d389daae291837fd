"""bench/gpu_check.py, the one-shot check of a lent GPU machine (issue 21 item 6), kept runnable: its CPU dry run
goes end to end with every row ok, and the wheels it brings are the lock's versions.

The dry run (``--device cpu --preset tiny``) runs the same code as the GPU run: it would have caught the
broken import (`build_student_from_teacher`, moved to `pipelines.distill`) that stopped the earlier script
after its training rows. `bench/gpu_wheels_check.py` (network, minutes) checks the wheels themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    pairs = [line.split("==") for line in lines if "==" in line]
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pairs}


def test_the_gpu_wheels_are_the_locks_versions():
    """A lock bump must move the wheel set with it: the GPU machine gets the versions every test here ran."""
    wanted, locked = pins(ROOT / "bench" / "gpu_requirements.txt"), pins(ROOT / "constraints.txt")
    assert {"diffusers", "av", "soundfile", "cffi", "pycparser"} <= set(wanted)  # soundfile needs cffi, cffi pycparser
    assert {name: locked.get(name) for name in wanted} == wanted


@pytest.mark.slow
def test_the_dry_run_reports_every_row(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out), "--device", "cpu", "--preset",
                           "tiny"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["image-stage step", "video-stage step", "distillation, 2 steps", "fast clip",
                          "balanced clip", "teacher clip", "host-device syncs"]  # fmt: skip
    assert {name: r["status"] for name, r in rows.items() if r["status"] != "ok"} == {}
    assert [len(rows[name]["step_times_s"]) for name in list(rows)[:3]] == [3, 3, 2]
    assert [rows[f"{mode} clip"]["nfe"] for mode in ("fast", "balanced", "teacher")] == [6, 18, 75]
    assert all(r["seconds"] > 0 and r["peak_gb"] > 0 for r in list(rows.values())[:6])
    assert rows["host-device syncs"]["syncing_steps"] == 0
    printed = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| ok |" in line]
    assert len(printed) == 7  # each row printed as it completed
    table = (out / "gpu.md").read_text()
    assert all(name in table for name in rows)
