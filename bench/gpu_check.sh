#!/usr/bin/env bash
# The prepared GPU check of the sd15 preset on one H100 or H200 with no internet, in under 5 minutes: a
# host-sync row, teacher image and video steps and a 2-step distillation in bf16 (seconds, peak GPU
# memory), then a 512² clip per mode (teacher 75 NFE, balanced 18, fast 6). Each row is printed as it
# completes; the table is rewritten in $OUT/gpu.md after every row.
#
#   bash bench/gpu_wheels.sh                     # once, here: the wheels the GPU image lacks, into .whl/
#   device run: carry [".whl"], command "bash bench/gpu_check.sh", timeout_s 360
#   dry run on a CPU (tiny preset):  OUT=/tmp/gpu bash bench/gpu_check.sh --device cpu --preset tiny
#
# The machine's own torch, transformers, accelerate, numpy … are used as they are (their versions are
# printed beside the lock's); only the wheels in .whl/ (bench/gpu_requirements.txt) are added.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fada-site .whl/*.whl
  export PYTHONPATH="/tmp/fada-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" || true
for name in torch transformers accelerate diffusers numpy huggingface_hub; do
  here=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || echo missing)
  locked=$(grep -i "^${name//_/[-_]}==" constraints.txt | cut -d= -f3 || true)
  echo "$name $here (lock ${locked:-?})" | tee -a "$OUT/gpu.txt"
done
PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_TIMEOUT:-280}" "$PYTHON" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
