#!/usr/bin/env bash
# Download, on this (networked) machine, the wheels bench/gpu_check.sh needs on the GPU machine, which
# has no internet: bench/gpu_requirements.txt (what gpu_check imports that the machine's image lacks,
# with their runtime dependencies, at the lock's versions), for CPython 3.12 on x86-64 manylinux. They
# land in .whl/ (git-ignored; ~45 MB), which the device tool carries: carry [".whl"].
#   bash bench/gpu_wheels.sh && python bench/gpu_wheels_check.py   # the second: an empty-venv install check
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl -r bench/gpu_requirements.txt
ls -la .whl && du -sh .whl
