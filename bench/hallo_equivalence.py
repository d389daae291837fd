"""Equivalence of fada's hallo family with Hallo's own code, at a small size with random weights.

    python bench/hallo_equivalence.py --hallo-src HALLO_CHECKOUT --hallo-python HALLO_VENV/bin/python

1. `bench/hallo_side.py` runs in Hallo's environment (its pinned torch/diffusers; an `xformers` stub
   module is put on its path): it builds Hallo's networks as `scripts/inference.py` does at fada's
   `hallo-tiny` sizes, re-randomises every parameter (zero-initialised layers included), writes a
   release folder with `hallo/net.pth`, and the inputs and outputs of one denoising-UNet forward and
   of 40 DDIM steps (guidance 1, and 3.5 through Hallo's `FaceAnimatePipeline`).
2. Here: `fada import hallo` of that folder, then the same computations through fada's code
   (`FadaModel.denoise`, `generate.teacher_strategy`: `DDIMSampler.for_model` + multi-CFG with
   cfg_audio = cfg_ref = the guidance), in fp32 on the CPU.
3. Prints and writes JSON (bench/results/hallo_equivalence.json, + .md): the largest absolute
   difference of each output. Target ≤ 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 1e-4
VARIANTS = {  # Hallo-side patches (bench/hallo_side.py flags); fada's side is the same in all three
    "as_shipped": [],
    "reference_fp32": ["--reference-fp32"],
    "reference_fp32_cond_tokens": ["--reference-fp32", "--reference-cond-tokens"],
}
RESULTS = ROOT / "bench" / "results"


def run_hallo_side(hallo_src: Path, hallo_python: str, work: Path, flags: list[str]) -> dict:
    stub = work / "stub" / "xformers"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("")
    (stub / "ops.py").write_text("def memory_efficient_attention(*args, **kwargs):\n    raise RuntimeError('stub')\n")
    env = dict(os.environ, PYTHONPATH=f"{hallo_src}{os.pathsep}{work / 'stub'}")
    command = [hallo_python, str(ROOT / "bench" / "hallo_side.py"), str(work), *flags]
    subprocess.run(command, cwd=hallo_src, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((work / "hallo_meta.json").read_text())


def fada_side(work: Path) -> dict:
    from pipelines.generate import GenerateConfig, teacher_strategy
    from pipelines.hallo import import_hallo
    from pipelines.hallo_modules import FaceConditions
    from pipelines.model import FadaModel

    torch.set_grad_enabled(False)
    io = load_file(str(work / "hallo_io.safetensors"))
    meta = json.loads((work / "hallo_meta.json").read_text())
    frames = meta["frames"]
    teacher = import_hallo(
        work / "pretrained", work / "teacher", identity="none", frames_per_clip=frames, overwrite=True
    )
    model = FadaModel.from_checkpoint(teacher, expect_stage="teacher").eval()
    h = model.config.latent_size
    diffs = {}

    # the reference image and motion frames through the VAE; the face inputs and audio as Hallo got them
    images = io["images"][0]  # (1+M, 3, H, W)
    latents = model.encode_images(images)  # (1+M, 4, h, w)
    diffs["vae_reference_latents"] = (latents - io["ref_latents"]).abs().max().item()
    latents = io["ref_latents"]  # from here on the same latents on both sides
    masks = {h // 2**i: torch.stack([io[f"mask_{k}_{i}"][0] for k in ("full", "face", "lip")])[None] for i in range(4)}
    face = FaceConditions(io["face_emb"], io["region"], masks)
    reference = model.reference_features(latents[None, 0], latents[None, 1:], face)
    audio = io["audio"].flatten(3)  # (1, F, W, layers·hidden)
    tokens = model.audio_tokens(audio)
    keep = torch.zeros(1, dtype=torch.bool)

    # (a) one denoising-UNet forward: the network's v, Hallo's layout (1, 4, F, h, w)
    noisy = io["noisy"].permute(0, 2, 1, 3, 4)  # (1, F, 4, h, w)
    for t in (999, 500):
        v = model.denoise(noisy, float(t), tokens, reference, keep, keep, native=True)
        diffs[f"unet_output_t{t}"] = (v.permute(0, 2, 1, 3, 4) - io[f"v_t{t}"]).abs().max().item()

    # (c) Hallo's wav2vec2 features (every layer, 25 fps before the transformer) from the release's wav2vec2 folder
    from pipelines.audio import build_audio_encoder

    expected = io["audio_features"]  # (T, L, D)
    features = build_audio_encoder(model.config).frame_features(io["speech"], expected.shape[0])  # (T, L·D)
    diffs["wav2vec2_features"] = (features - expected.flatten(1)).abs().max().item()

    # (b) DDIM, 40 steps, from Hallo's initial noise: fada's teacher strategy (multi-CFG with both scales = guidance)
    strategy = teacher_strategy(model.config)
    for guidance in (1.0, 3.5):
        expected = io[f"ddim_cfg{guidance}"]  # (41, 1, 4, F, h, w)
        config = GenerateConfig(cfg_audio=guidance, cfg_ref=guidance)
        scheduler = strategy.make_scheduler(40)
        z = expected[0].permute(0, 2, 1, 3, 4)
        steps = []
        for i, timestep in enumerate(scheduler.timesteps):
            z = scheduler.step(strategy.guided_eps(model, z, timestep, tokens, reference, config), z, i)
            steps.append(z.permute(0, 2, 1, 3, 4))
        for n in (1, 2, 40):
            diffs[f"ddim_cfg{guidance}_step{n}"] = (steps[n - 1] - expected[n]).abs().max().item()
        diffs[f"ddim_cfg{guidance}_latent_scale"] = expected[40].abs().max().item()
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hallo-src", type=Path, required=True, help="a checkout of fudan-generative-vision/hallo")
    parser.add_argument("--hallo-python", required=True, help="python of Hallo's own environment")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "hallo_equivalence.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, flags in VARIANTS.items():
            work = (args.work or Path(tmp)) / variant
            work.mkdir(parents=True, exist_ok=True)
            hallo = run_hallo_side(args.hallo_src.resolve(), args.hallo_python, work, flags)
            runs[variant] = {"hallo_environment": hallo, "max_abs_diff": fada_side(work)}
    checked = ("unet_output_t999", "unet_output_t500", "ddim_cfg1.0_step1", "ddim_cfg1.0_step2",
               "ddim_cfg3.5_step1", "ddim_cfg3.5_step2")  # fmt: skip
    for run in runs.values():
        run["within_target"] = {k: run["max_abs_diff"][k] <= TARGET for k in checked}
    result = {
        "target_max_abs_diff": TARGET,
        "runs": runs,
        "fada_environment": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "config": "hallo-tiny sizes (64² images, UNet widths 32/64/64/64, 1 layer per block), F=4, M=2, fp32, CPU",
        "variants": {
            "as_shipped": "Hallo's code unchanged",
            "reference_fp32": "Hallo's reference features kept in fp32 (its ReferenceAttentionControl.update "
            "casts them to fp16 by default, even in an fp32 run)",
            "reference_fp32_cond_tokens": "and, with CFG, every reference-net image reads the conditional identity "
            "tokens (Hallo's pipeline tiles [uncond, cond] over its 2·(1+M) reference images, and its reader "
            "tiles the two reference images over the frames)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| output | " + " | ".join(VARIANTS) + " |", "|---" * (1 + len(VARIANTS)) + "|"]
    keys = [k for k in runs["as_shipped"]["max_abs_diff"] if "scale" not in k]
    lines += [f"| {k} | " + " | ".join(f"{runs[v]['max_abs_diff'][k]:.3e}" for v in VARIANTS) + " |" for k in keys]
    md = (
        "# fada hallo family vs Hallo's code (random weights, hallo-tiny sizes, fp32 CPU)\n\n" + "\n".join(lines) + "\n"
    )
    args.out.with_suffix(".md").write_text(md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
