"""One `fada demo` teacher, sampled again at other DDIM steps and CFG scales: its identity and mouth r.

Reuses the demo's own generation and eval (`pipelines.demo.generate_mode`) on a finished demo folder, so the
figures are comparable with the demo table's; one torch thread. Run it pinned, as the demo runs were:

    taskset -c 0 python bench/demo_identity_probe.py --run /tmp/budget/demo_15min --work /tmp/probe \\
        --settings 10:2:1,10:1.5:1      # steps:cfg_audio:cfg_ref, one video (and its reversed) each

Prints one JSON line per setting (identity fraction, mouth r forward and reversed, face rate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `fada demo` folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for the videos")
    parser.add_argument("--settings", required=True, help="steps:cfg_audio:cfg_ref, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of held-out speech per video")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pipelines.demo import DemoSplit, HeldOutClip, generate_mode, held_out_speech, identity_anchors
    from pipelines.generate import GenerateConfig
    from pipelines.manifest import clip_path
    from pipelines.metrics.identity import fraction_of_range

    summary = json.loads((args.run / "demo_summary.json").read_text())
    curated, held_identity = args.run / "curated", summary["held_out_identity"]
    held = pd.read_parquet(curated / "held_out.parquet")
    portrait = args.run / "data" / "identities" / f"{held_identity}.png"
    clips = [
        HeldOutClip(Path(p).stem, portrait, clip_path(curated / "held_out.parquet", p)) for p in held["video_path"]
    ]
    split = DemoSplit(curated, held_identity, clips, portrait, {}, int(held["n_frames"].sum()), 0.0)
    anchors = identity_anchors(split, summary["model"]["sample_size"])
    teacher = Path(summary["modes"]["teacher"]["checkpoint"])
    for setting in args.settings.split(","):
        steps, cfg_audio, cfg_ref = setting.split(":")
        out = args.work / setting.replace(":", "_")
        speech, reverse = held_out_speech(split, args.seconds, out / "generated" / "speech")
        config = GenerateConfig(steps=int(steps), seed=0, crop=False, cfg_audio=float(cfg_audio),
                                cfg_ref=float(cfg_ref))  # fmt: skip
        row = generate_mode("teacher", teacher, speech, reverse, out, split.held_out, config, "cpu", True)
        fraction = fraction_of_range(row["identity_psnr16"], anchors["identity_psnr16_floor"],
                                     anchors["identity_psnr16_ceiling"])  # fmt: skip
        print(
            json.dumps(
                {
                    "steps": int(steps),
                    "cfg_audio": float(cfg_audio),
                    "cfg_ref": float(cfg_ref),
                    "identity_fraction": fraction,
                    "mouth_r": row["mouth_r"],
                    "mouth_r_reversed": row["mouth_r_reversed"],
                    "face_rate": row["face_rate"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
