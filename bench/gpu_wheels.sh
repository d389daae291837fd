#!/usr/bin/env bash
# Download, on this (networked) machine, the wheels that bench/gpu_check.sh needs and the GPU
# machine's image lacks (it has torch, accelerate, transformers, huggingface-hub, pandas, pyarrow,
# rich, typer, safetensors, scipy, opencv; not diffusers, PyAV or soundfile). CPython 3.12, x86-64.
# They land in .whl/ (git-ignored; ~43 MB), which the device tool carries: carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "$(grep -i '^diffusers==' constraints.txt)" "$(grep -i '^av==' constraints.txt)" \
  "$(grep -i '^soundfile==' constraints.txt)"
ls -la .whl
