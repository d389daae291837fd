"""`fada demo` at several budgets on one CPU core: which budget meets the demo's targets.

Each run is the default `fada demo --minutes N` in its own process, pinned to one core (`taskset -c
CORE`, every child process too) with one torch thread, which imitates a machine whose two vCPUs act as
one core. Per budget and mode it records the wall-clock minutes, the teacher's and students' steps,
the face rate, the identity (fraction of the way from the nearest other face to the real clip), the
mouth-vs-speech r with the reversed-speech control, and which targets hold
(`pipelines.demo.TARGETS`).

    python bench/demo_budget.py --work /tmp/budget --minutes 15 20 25
    python bench/demo_budget.py --work /tmp/budget --report   # the table from runs already made
    python bench/demo_budget.py --work /tmp/new /tmp/old --report   # runs of several folders, labelled

A folder's ``label.txt`` (one line: what the code was at that run) labels its rows; the folder's name
otherwise.

Writes ``bench/results/demo_budget.{md,json}`` and copies each run's contact sheet to
``bench/results/demo_<N>min_contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run(work: Path, minutes: float, core: int) -> dict:
    """One pinned `fada demo` run; its summary with the measured wall-clock seconds."""
    out = work / f"demo_{minutes:g}min"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = ["taskset", "-c", str(core), sys.executable, "-m", "fada_cli.main", "demo", "--out", str(out),
               "--minutes", f"{minutes:g}", "--quiet", "--json"]  # fmt: skip
    began = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"fada demo --minutes {minutes:g} failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout)
    summary["measured_wall_s"] = time.time() - began
    (work / f"summary_{minutes:g}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def row_of(summary: dict, label: str) -> dict:
    modes = summary["modes"]
    return {
        "run": label,
        "minutes": summary["budget_s"] / 60,
        "teacher_share": summary["teacher"]["seconds"] / summary["budget_s"],
        "wall_minutes": summary.get("measured_wall_s", summary["total_s"]) / 60,
        "teacher_steps": summary["teacher"]["steps"],
        "student_steps": {mode: s["steps"] for mode, s in summary["students"].items()},
        "generation": summary["generation"],
        "modes": {
            mode: {
                k: row.get(k)
                for k in (
                    "nfe",
                    "face_rate",
                    "identity_fraction",
                    "identity_psnr16",
                    "mouth_r",
                    "mouth_r_reversed",
                    "iqa",
                    "seconds_per_video_second",
                )
            }  # fmt: skip
            for mode, row in modes.items()
        },
        "targets_met": summary["targets_met"],
        "all_met": all(all(checks.values()) for checks in summary["targets_met"].values()),
        "contact_sheet": summary["contact_sheet"],
    }


def report(rows: list[dict]) -> None:
    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    lines = [
        "# `fada demo` budgets on one core (`bench/demo_budget.py`)",
        "",
        "Each run: the default `fada demo --minutes N`, pinned to one CPU core with one torch thread (its student "
        "and generation processes share that core). Identity: fraction of the way from the nearest other face to "
        "the real held-out clip (target ≥ 0.75); mouth r: mouth darkness vs speech energy (target ≥ 0.5 and ≥ 0.3 "
        "above the reversed-speech control); face: share of frames with a face found (target ≥ 0.9); the fast "
        "student's r within 0.1 of the teacher's.",
        "",
        "| run | budget | wall min | teacher steps (share of budget) | students (balanced / fast) | teacher sampling | "
        "mode | NFE | face | identity | mouth r | r reversed | BRISQUE | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gen = row["generation"]
        for i, (mode, m) in enumerate(row["modes"].items()):
            head = (
                f"| {row['run']} | {row['minutes']:g} min | {row['wall_minutes']:.1f} | "
                f"{row['teacher_steps']} ({row['teacher_share']:.0%}) | "
                f"{row['student_steps'].get('balanced')} / {row['student_steps'].get('fast')} | "
                f"{gen['teacher_steps']} steps, {gen['seconds']:g} s |"
                if i == 0
                else "| | | | | | |"
            )
            checks = row["targets_met"].get(mode)
            missed = [name for name, ok in (checks or {}).items() if not ok]
            met = "—" if checks is None else ("missed: " + ", ".join(missed) if missed else "all met")
            lines.append(
                f"{head} {mode} | {m['nfe']} | {fmt(m['face_rate'], '.0%')} | {fmt(m['identity_fraction'], '.2f')} "
                f"| {fmt(m['mouth_r'], '.2f')} | {fmt(m['mouth_r_reversed'], '.2f')} | {fmt(m['iqa'], '.1f')} | {met} |"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_budget.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "demo_budget.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, nargs="+", required=True,
                        help="folder for the demo runs (the first); with --report, every folder's runs")  # fmt: skip
    parser.add_argument("--minutes", type=float, nargs="*", default=[15.0], help="budgets to run")
    parser.add_argument("--core", type=int, default=0, help="the CPU core every run is pinned to")
    parser.add_argument("--report", action="store_true", help="only the table, from the runs in --work")
    args = parser.parse_args(argv)
    args.work[0].mkdir(parents=True, exist_ok=True)
    if not args.report:
        for minutes in args.minutes:
            summary = run(args.work[0], minutes, args.core)
            shutil.copy(summary["contact_sheet"], RESULTS / f"demo_{minutes:g}min_contact_sheet.png")
    rows = []
    for work in args.work:
        label_file = work / "label.txt"
        label = label_file.read_text().strip().splitlines()[0] if label_file.is_file() else work.name
        summaries = sorted(work.glob("summary_*.json"), key=lambda p: float(p.stem.split("_")[1]))
        rows += [row_of(json.loads(p.read_text()), label) for p in summaries]
    report(rows)


if __name__ == "__main__":
    main()
