"""Distillation settings for the demo's students: the fast student's mouth r after N steps, per setting.

Starts from a finished `fada demo` run (its teacher, its distillation manifest, its held-out portrait and
speech), distils a student with one setting up to each of the given step counts (resuming), and after each
generates the held-out portrait driven by the speech and by the speech reversed in time, at the demo's
guidance (audio 2, reference 1), and scores the mouth darkness against the forward speech's energy
(`portrait_mouth_r`). One torch thread; training CPU minutes are counted with `time.process_time`.

    python bench/student_recipe.py --demo demo_run --work /tmp/students --name s2m4 --solver-steps 2 \\
        --motion-loss-weight 4 --steps 4 10
    python bench/student_recipe.py --work /tmp/students --report   # bench/results/student_recipe.md

Each point is one 2-s video per direction; mouth r of one such video moves by about ±0.05 from run to run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from pipelines.distill import DistillStage
    from pipelines.generate import GenerateConfig
    from pipelines.media import read_audio, read_video
    from pipelines.metrics.proxies import portrait_mouth_r
    from pipelines.pipeline import FadaPipeline
    from pipelines.training import fit

    torch.set_num_threads(1)
    demo = args.demo
    summary = json.loads((demo / "demo_summary.json").read_text())
    teacher = Path(summary["teacher"]["checkpoint"])
    made = json.loads(next((demo / "generated" / "teacher").glob("*.json")).read_text())
    portrait = np.asarray(Image.open(made["portrait"]).convert("RGB"))
    speech = next(p for p in (demo / "generated" / "speech").glob("*.wav") if not p.stem.endswith("_reversed"))
    reversed_speech = speech.with_name(f"{speech.stem}_reversed.wav")
    audio = read_audio(speech)
    out = args.work / args.name
    options = dict(mode=args.mode, batch_size=args.batch_size, lr=args.lr, solver_steps=args.solver_steps,
                   motion_loss_weight=args.motion_loss_weight, seed=0, checkpoint_every=10**6,
                   cfg_audio_range=(1.0, 3.0), cfg_ref_range=(1.0, 1.5))  # fmt: skip
    train_cpu = 0.0
    for i, steps in enumerate(sorted(args.steps)):
        began = time.process_time()
        fit(DistillStage(teacher), demo / "curated" / "distill.parquet", out, overrides=options | {"steps": steps},
            resume=i > 0, device="cpu", quiet=True)  # fmt: skip
        train_cpu += time.process_time() - began
        pipe = FadaPipeline.from_checkpoint(out, device="cpu")
        r = {}
        for label, wav in (("r", speech), ("r_reversed", reversed_speech)):
            video = args.work / f"{args.name}_{steps}_{label}.mp4"
            pipe.write(made["portrait"], wav, video, GenerateConfig(cfg_audio=2.0, cfg_ref=1.0, crop=False), quiet=True)
            r[label] = round(float(portrait_mouth_r(read_video(video)[0], audio, portrait)), 3)
        point = {"name": args.name, **{k: v for k, v in options.items() if k != "seed"}, "steps": steps,
                 "train_cpu_min": round(train_cpu / 60, 2), **r}  # fmt: skip
        with (args.work / "points.jsonl").open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        print(json.dumps(point), flush=True)


def report(work: Path) -> None:
    points = [json.loads(line) for line in (work / "points.jsonl").read_text().splitlines() if line.strip()]
    lines = [
        "# Demo student settings (`bench/student_recipe.py`)",
        "",
        "Fast students distilled from one 15-minute `fada demo` teacher (batch 2, lr 1e-4, CFG ranges audio 1–3 / "
        "reference 1–1.5), one torch thread; mouth r of a 2-s held-out video (audio 2 / reference 1) driven by the "
        "speech and by the speech reversed, both against the forward speech. One video per point: r moves by about "
        "±0.05 between runs.",
        "",
        "| setting | solver steps | motion α | steps | training CPU min | mouth r | r reversed |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(f"| {p['name']} | {p['solver_steps']} | {p['motion_loss_weight']:g} | {p['steps']} | "
                     f"{p['train_cpu_min']:.2f} | {p['r']:.2f} | {p['r_reversed']:.2f} |")  # fmt: skip
    teachers = (
        work / "teacher.jsonl"
    )  # the same teacher's own r, for scale: {"steps", "cfg_audio", "cfg_ref", "r", ...}
    if teachers.is_file():
        head = "| teacher DDIM steps | CFG audio / reference | mouth r | r reversed |"
        lines += ["", "The teacher itself, same portrait and speech (DDIM):", "", head, "|---|---|---|---|"]
        for t in (json.loads(line) for line in teachers.read_text().splitlines() if line.strip()):
            lines.append(
                f"| {t['steps']} | {t['cfg_audio']:g} / {t['cfg_ref']:g} | {t['r']:.2f} | {t['r_reversed']:.2f} |"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "student_recipe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder of the students and points.jsonl")
    parser.add_argument("--demo", type=Path, help="a finished `fada demo` run folder")
    parser.add_argument("--name", default="student", help="the setting's name in the table")
    parser.add_argument("--mode", default="fast", choices=("fast", "balanced"))
    parser.add_argument("--solver-steps", type=int, default=2, help="teacher DDIM steps per PeRFlow window")
    parser.add_argument("--motion-loss-weight", type=float, default=4.0, help="α of the motion-weighted loss")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10], help="distillation steps to score at")
    parser.add_argument("--report", action="store_true", help="only write the table from points.jsonl")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report:
        if args.demo is None:
            parser.error("--demo is needed to run (or pass --report)")
        run(args)
    report(args.work)


if __name__ == "__main__":
    main()
