#!/usr/bin/env bash
# Fixed-seed runs for proving that a refactor changes no behaviour: run this on the commit before and after,
# then compare the two folders with scripts/compare_runs.py (every checkpoint tensor, the queue, metrics).
#   bash scripts/fixed_seed_runs.sh SRC_CHECKOUT OUT_DIR
#   .venv/bin/python scripts/compare_runs.py BEFORE_DIR AFTER_DIR cached per_image v3
set -euo pipefail
SRC=$(cd "$1" && pwd); OUT=$2
PY=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
D=${MOCO_DATA:-$(cd "$(dirname "$0")/../../shared/datasets/cifar10" && pwd)}
mkdir -p "$OUT"
for name in cached per_image v3; do
  case $name in
    cached) args=(--preset cifar10-cpu);;
    per_image) args=(--preset cifar10-cpu --set data.pipeline=per_image);;
    v3) args=(--preset cifar10-v3-cpu);;
  esac
  (cd "$SRC" && PYTHONPATH="$SRC" "$PY" -m moco pretrain "${args[@]}" --data "$D" --out "$OUT/$name" \
    --max-images 2048 --epochs 2 --no-progress --overwrite) > "$OUT/$name.log" 2>&1
  echo "$name done"
done
