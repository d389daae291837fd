#!/usr/bin/env bash
# The prepared GPU check of the sd15 preset on one H100 or H200 with no internet, in under 5 minutes
# (bench/gpu_check.py): image- and video-stage teacher steps and a 2-step distillation in bf16 with
# gradient checkpointing, then a 512² clip per mode (fast 6 NFE, balanced 18, teacher 75), each with its
# seconds and peak GPU memory, then a host-sync row. Each row is printed as it completes, and $OUT/gpu.md
# and $OUT/gpu.json are rewritten after every row, so a run cut short still reports.
#
#   bash bench/gpu_wheels.sh                     # once, here (networked): the wheels the GPU image lacks, into .whl/
#   python bench/gpu_wheels_check.py             # here: they install into an empty venv with --no-index
#   device run: carry [".whl"], command "bash bench/gpu_check.sh", timeout_s 400
#   dry run on a CPU (tiny preset):  OUT=/tmp/gpu bash bench/gpu_check.sh --device cpu --preset tiny
#
# The machine's own torch, transformers, accelerate, numpy … are used as they are (their versions are
# printed beside the lock's); only the wheels in .whl/ (bench/gpu_requirements.txt, CPython 3.12) are
# added, into /tmp/fada-site. With another Python (a dry run here) the wheels are not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  if [ "$("$PYTHON" -c 'import sys; print(sys.version_info[:2] == (3, 12))')" = True ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fada-site \
      .whl/*.whl
    export PYTHONPATH="/tmp/fada-site:$PWD"
  else
    echo "note: .whl/ holds CPython 3.12 wheels and $PYTHON is not 3.12; using its own packages" >&2
  fi
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  for name in torch transformers accelerate diffusers numpy huggingface_hub safetensors av soundfile; do
    here=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || echo missing)
    locked=$(grep -i "^${name//_/[-_]}==" constraints.txt | cut -d= -f3 || true)
    echo "$name $here (lock ${locked:-?})"
  done
} | tee "$OUT/gpu.txt"
PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_TIMEOUT:-285}" "$PYTHON" bench/gpu_check.py --out "$OUT" "$@" 2>&1 |
  tee "$OUT/gpu_check.log"
