#!/usr/bin/env bash
# The GPU checks in one run (under 10 minutes on one H200): see benchmarks/gpu_check.py.
#   here:            python benchmarks/gpu_check.py --pack .gpu/cifar10.npz   (.gpu/ is git-ignored)
#   on the machine:  bash benchmarks/gpu_check.sh [--budget SECONDS]         (device tool: carry [".gpu"])
# Uses $MOCO_DATA or ../shared/datasets/cifar10 when present, else unpacks .gpu/cifar10.npz into /tmp.
# Results: $OUT (or benchmarks/results)/gpu_check.json, the demo run's folder beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
$PY -c "import moco" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi || true
DATA=${MOCO_DATA:-../shared/datasets/cifar10}
if [ ! -d "$DATA/train" ]; then
  DATA=/tmp/cifar10
  [ -d "$DATA/train" ] || $PY benchmarks/gpu_check.py --unpack .gpu/cifar10.npz --data "$DATA"
fi
exec $PY benchmarks/gpu_check.py --data "$DATA" "$@"
