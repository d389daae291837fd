"""Teacher vs balanced vs fast, and the paper's distillation ablations, on one trained teacher.

Distils the teacher into four students with the same data, steps and seed:

- ``balanced``: 3 CFG branches kept at inference (NFE 18), adaptive GT weight;
- ``fast-tokens``: CFG distilled into learnable tokens (NFE 6), adaptive GT weight (the paper's FADA);
- ``fast-none``: CFG distilled with no CFG input (``--cfg-conditioning none``), adaptive GT weight;
- ``fast-fixed0``: CFG tokens, no ground-truth supervision (``--gt-weight fixed-0``).

Then, for the teacher and each student, `mouth_sync_evidence.py` generates from a held-out portrait
driven by each held-out speech clip and by silence, and measures how well the generated mouth
follows the speech. Work runs in ``--jobs`` one-thread subprocesses; finished work is skipped on a
rerun. Writes ``OUT/distill_evidence.json`` and the table ``OUT/distill_evidence.md``.

    python bench/distill_evidence.py --teacher runs/teacher --manifest data/train_manifest.parquet \\
        --image data/identities/id4.png --speech data/clips/demo_0014.mp4 --out runs/evidence --steps 60
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

VARIANTS = {
    "balanced": ["--mode", "balanced", "--gt-weight", "adaptive"],
    "fast-tokens": ["--mode", "fast", "--cfg-conditioning", "tokens", "--gt-weight", "adaptive"],
    "fast-none": ["--mode", "fast", "--cfg-conditioning", "none", "--gt-weight", "adaptive"],
    "fast-fixed0": ["--mode", "fast", "--cfg-conditioning", "tokens", "--gt-weight", "fixed-0"],
}
EVIDENCE_SCRIPT = Path(__file__).with_name("mouth_sync_evidence.py")
REGION_SCRIPT = Path(__file__).with_name("mouth_region_evidence.py")
KEYS = ("r_opening_lag0", "r_darkness_lag0", "sync_proxy_conf")  # table columns, speech- then silence-driven
TAIL = 0.25  # losses are averaged over the last quarter of the logged steps


def _run(command: list[str], log: Path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")


def _finished_step(checkpoint: Path) -> int:
    info = checkpoint / "fada_checkpoint.json"
    return int(json.loads(info.read_text())["step"]) if info.is_file() else 0


def distill_variant(args, name: str) -> Path:
    """The student of one variant at ``args.steps`` (distilled, resumed or already there)."""
    out = args.out / "students" / name
    done = _finished_step(out)
    if done >= args.steps:
        return out
    command = [sys.executable, "-m", "fada_cli.main", "distill", "--teacher", str(args.teacher)]
    command += ["--manifest", str(args.manifest), "--tier", "B", "--out", str(out), *VARIANTS[name]]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    command += ["--solver-steps", str(args.solver_steps)]
    command += ["--checkpoint-every", str(max(1, args.steps // 4)), "--device", "cpu", "--seed", str(args.seed)]
    command += ["--resume"] if done else []
    _run(command, args.out / "logs" / f"distill_{name}.log")
    return out


def evidence(args, model: str, checkpoint: Path, speech: Path) -> dict:
    """`mouth_sync_evidence.py` on one (model, speech) pair; cached in its folder."""
    out = args.out / "generated" / model / speech.stem
    result = out / "mouth_sync.json"
    if not result.is_file():
        command = [sys.executable, str(EVIDENCE_SCRIPT), "--checkpoint", str(checkpoint), "--image", str(args.image)]
        command += ["--speech", str(speech), "--out", str(out), "--threads", "1"]
        _run(command, args.out / "logs" / f"evidence_{model}_{speech.stem}.log")
    figures = json.loads(result.read_text())
    region = out / "mouth_region.json"  # the fixed-window darkness proxy (needs no mesh on the frames)
    if not region.is_file():
        videos = [str(out / f"{driven}.mp4") for driven in ("speech_driven", "silence_driven")]
        command = [sys.executable, str(REGION_SCRIPT), "--image", str(args.image), "--speech", str(speech)]
        command += ["--videos", *videos, "--out", str(region)]
        command += ["--real", str(speech)] if model == "teacher" else []  # the ceiling, measured once
        _run(command, args.out / "logs" / f"region_{model}_{speech.stem}.log")
    by_video = json.loads(region.read_text())
    for driven in ("speech_driven", "silence_driven"):
        figures[driven] |= by_video[str(out / f"{driven}.mp4")]
    if f"{speech} (real)" in by_video:
        figures["real_reference_clip"] = figures.get("real_reference_clip", {}) | by_video[f"{speech} (real)"]
    return figures


def loss_tail(checkpoint: Path) -> dict[str, float]:
    """Mean L_distill, L_gt, R and W over the last quarter of a student's train_log.csv."""
    with (checkpoint / "train_log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    tail = rows[-max(1, int(len(rows) * TAIL)) :]
    names = ("loss_distill", "loss_gt", "ratio_mean", "weight_mean")
    return {name: float(np.mean([float(r[name]) for r in tail])) for name in names} | {"steps": int(rows[-1]["step"])}


def summarise(per_speech: list[dict]) -> dict[str, float]:
    """Means over the speech clips of the speech- and silence-driven figures."""
    row: dict[str, float] = {}
    for driven in ("speech_driven", "silence_driven"):
        for key in ("r_opening_lag0", "r_opening_best_near", "sync_proxy_conf", "mouth_opening_std", "r_darkness_lag0"):
            values = [e[driven].get(key, float("nan")) for e in per_speech]
            row[f"{driven}.{key}"] = float(np.mean(values))
    speech = [e["speech_driven"] for e in per_speech]
    row["nfe"] = speech[0]["nfe"]
    row["seconds_per_video_second"] = float(np.mean([s["seconds"] / (s["frames"] / 25.0) for s in speech]))
    return row


def write_table(rows: dict[str, dict], args, path: Path) -> None:
    real = rows.pop("_real_clips", None)
    lines = [
        "# distill_evidence: teacher vs students, and the ablations",
        "",
        f"Teacher `{args.teacher}`; students distilled {args.steps} steps each (batch {args.batch_size}, lr {args.lr},"
        f" {args.solver_steps} teacher solver steps per window,"
        f" seed {args.seed}, tier B) on `{args.manifest}`; held-out portrait `{args.image}`; held-out speech "
        f"{', '.join(f'`{s.name}`' for s in args.speech)}. CPU, one thread per job, {args.jobs} jobs at once "
        f"({platform.platform()}).",
        "",
        "r = Pearson r between the generated mouth opening (face mesh) and the speech RMS per video frame, at lag 0,"
        " mean over the speech clips (— where the mesh found the face in under half the frames). r dark = the same"
        " with the mouth darkness in a window fixed by the portrait (`mouth_region_evidence.py`, a proxy that needs"
        " no mesh on generated frames). The silence-driven video is the chance level of the same model. s/video s"
        " is the wall clock of the whole `generate` call per second of video, with other jobs running beside it.",
        "",
        "| model | NFE | s / video s | r speech | r silence | r dark speech | r dark silence | sync proxy speech "
        "| sync proxy silence | L_distill | L_gt | mean R | mean W |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        losses = row.get("losses", {})
        figures = [f"{row[f'{driven}.{key}']:.3f}" for key in KEYS for driven in ("speech_driven", "silence_driven")]
        lines.append(
            f"| {name} | {row['nfe']} | {row['seconds_per_video_second']:.2f} | "
            + " | ".join(figure.replace("nan", "—") for figure in figures)
            + " | "
            + " | ".join(f"{losses[k]:.4f}" if k in losses else "—" for k in ("loss_distill", "loss_gt"))
            + " | "
            + " | ".join(f"{losses[k]:.3g}" if k in losses else "—" for k in ("ratio_mean", "weight_mean"))
            + " |"
        )
    if real is not None:
        lines += [
            "",
            f"Real held-out clips (the ceiling): r at lag 0 {real['r_opening_lag0']:.3f},"
            f" r dark {real['r_darkness_lag0']:.3f}.",
        ]
    path.write_text("\n".join(lines) + "\n")
    if real is not None:
        rows["_real_clips"] = real


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="distillation clips (tier B is used)")
    parser.add_argument("--image", type=Path, required=True, help="held-out portrait")
    parser.add_argument("--speech", type=Path, nargs="+", required=True, help="held-out speech clips (mp4/wav)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60, help="distillation steps per student")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--solver-steps", type=int, default=10, help="teacher DDIM steps per window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at once (one torch thread each)")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := sorted(set(variants) - set(VARIANTS)):
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    def student_evidence(name: str) -> list[dict]:
        checkpoint = distill_variant(args, name)
        return [evidence(args, name, checkpoint, speech) for speech in args.speech]

    # The teacher's videos (the slowest work) start beside the first distillations.
    with ThreadPoolExecutor(args.jobs) as pool:
        teacher_runs = [pool.submit(evidence, args, "teacher", args.teacher, speech) for speech in args.speech]
        student_runs = {name: pool.submit(student_evidence, name) for name in variants}
        by_model = {"teacher": [run.result() for run in teacher_runs]}
        by_model |= {name: run.result() for name, run in student_runs.items()}
    models = {"teacher": args.teacher} | {name: args.out / "students" / name for name in variants}

    rows: dict[str, dict] = {}
    for model, checkpoint in models.items():
        rows[model] = summarise(by_model[model]) | {"checkpoint": str(checkpoint)}
        if model != "teacher":
            rows[model]["losses"] = loss_tail(checkpoint)
    teacher_real = [r.get("real_reference_clip", {}) for r in by_model["teacher"]]  # measured beside its videos
    real = [r for r in teacher_real if "r_opening_lag0" in r]
    if real:
        rows["_real_clips"] = {k: float(np.mean([r[k] for r in real])) for k in ("r_opening_lag0", "r_darkness_lag0")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill_evidence.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, args, args.out / "distill_evidence.md")
    print((args.out / "distill_evidence.md").read_text())


if __name__ == "__main__":
    main()
