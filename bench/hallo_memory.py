"""Memory of each "Distil Hallo" step at Hallo's released size, counted on the meta device.

    python bench/hallo_memory.py   # writes bench/results/hallo_memory.{json,md}

The model is built with `FadaModel.from_config(get_preset("hallo"))` under ``torch.device("meta")``:
no memory, no time, exact parameter counts. Static bytes per step = weights (in the dtype the step
holds them) + gradients of the trained weights (fp32) + optimiser state (AdamW: 8 bytes per trained
weight; 8-bit AdamW: 2). Activations are not counted here (the meta device allocates nothing); the
SD1.5-size measurement in bench/results/sd15.md (16 frames, batch 1, bf16, gradient checkpointing)
puts them at ≈ 3.5 GB for a training step of the same UNets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "hallo_memory"


def main() -> None:
    from pipelines.distill import build_student_from_teacher
    from pipelines.model import FadaModel
    from pipelines.model_config import get_preset

    with torch.device("meta"):
        teacher = FadaModel.from_config(get_preset("hallo"))
        students = {mode: build_student_from_teacher(teacher, "tokens" if mode == "fast" else "none")
                    for mode in ("balanced", "fast")}  # fmt: skip
    components = {name: sum(p.numel() for p in part.parameters()) for name, part in teacher.components().items()}
    total = sum(components.values())
    gb = 1e9
    rows = [
        {"step": "fada import hallo", "holds": "every weight in fp32 (net.pth's tensors are moved in, not copied)",
         "static_gb": 4 * total / gb},
        {"step": "fada generate (teacher, fp32)", "holds": "weights fp32", "static_gb": 4 * total / gb},
        {"step": "fada generate (teacher, --dtype bf16)", "holds": "weights bf16", "static_gb": 2 * total / gb},
    ]  # fmt: skip
    for mode, student in students.items():
        trained = sum(p.numel() for p in student.parameters() if p.requires_grad)
        weights = 4 * sum(p.numel() for p in student.parameters()) + 2 * total  # student fp32 + frozen teacher bf16
        for optimizer, moments in (("adamw", 8), ("adamw8bit", 2)):
            static = weights + 4 * trained + moments * trained
            rows.append({
                "step": f"fada distill --mode {mode} (bf16 autocast, --optimizer {optimizer})",
                "holds": "student fp32 + teacher bf16 + fp32 grads + optimiser moments",
                "trained_m": trained / 1e6,
                "static_gb": static / gb,
            })  # fmt: skip
        rows.append({"step": f"fada generate ({mode} student, --dtype bf16)", "holds": "weights bf16",
                     "static_gb": 2 * sum(p.numel() for p in student.parameters()) / gb})  # fmt: skip
    result = {"parameters_m": {k: v / 1e6 for k, v in components.items()}, "total_m": total / 1e6, "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Distil Hallo: static memory at Hallo's released size (bench/hallo_memory.py, meta device)",
        "",
        f"Parameters: {total / 1e6:.0f} M — " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in components.items()) + ".",
        "Static = weights + gradients + optimiser state; activations come on top (≈ 3.5 GB for a 16-frame training "
        "step with gradient checkpointing in bf16, measured for the same SD1.5 UNets in bench/results/sd15.md).",
        "",
        "| step | holds | static GB |",
        "|---|---|---|",
    ]
    lines += [f"| {r['step']} | {r['holds']} | {r['static_gb']:.1f} |" for r in rows]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
