#!/usr/bin/env bash
# The prepared GPU check of the sd15 preset (one H100 or H200, under 8 minutes): a teacher step of
# each stage and a distillation step per mode in bf16 (seconds, peak GPU memory), then one video per
# mode at 512² (teacher 75 NFE, balanced 18, fast 6: frames per second). Table in $OUT/gpu.md.
#
#   bash bench/gpu_wheels.sh                     # once, here: wheels the GPU image lacks, into .whl/
#   device run: carry [".whl"], command "bash bench/gpu_check.sh", timeout_s 540
#   dry run on a CPU (tiny preset, minutes):  OUT=/tmp/gpu bash bench/gpu_check.sh --device cpu --preset tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fada-site .whl/*.whl
  export PYTHONPATH="/tmp/fada-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" || true
PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
