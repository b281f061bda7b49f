#!/usr/bin/env bash
# Fixed-seed runs for proving that a refactor changes no behaviour: run this on the commit before and after,
# with the same FIXTURES folder, then compare the two run folders with scripts/compare_runs.py (every checkpoint
# tensor, the queue, metrics.jsonl and results.json without their wall-clock fields).
#   bash scripts/fixed_seed_runs.sh SRC_CHECKOUT OUT_DIR [FIXTURES_DIR] [RUN ...]
#   .venv/bin/python scripts/compare_runs.py BEFORE_DIR AFTER_DIR cached per_image v3 device shards \
#       finetune_ck finetune_random detect detect_masks replay
# The runs: pretraining with each pipeline (cached, per_image, device), MoCo v3, from shards, a budgeted run
# replayed from its recorded plan, fine-tuning from a checkpoint and from random init, detection with and
# without masks. FIXTURES (default OUT_DIR/fixtures) holds what both sides must share, made once by the first
# call: a CIFAR-10 subset as a folder and as shards, two pasted detection sets, a backbone and a time-budget
# plan (a timed run differs between calls; its replay does not). Name RUNs to make only those.
set -euo pipefail
SRC=$(cd "$1" && pwd); OUT=$2; FIX=${3:-$OUT/fixtures}
shift $(( $# < 3 ? $# : 3 ))
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(cached per_image v3 device shards replay finetune_ck finetune_random detect detect_masks)
PY=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
D=${MOCO_DATA:-$(cd "$(dirname "$0")/../../shared/datasets/cifar10" && pwd)}
mkdir -p "$OUT" "$FIX"
OUT=$(cd "$OUT" && pwd); FIX=$(cd "$FIX" && pwd)
moco() { (cd "$SRC" && PYTHONPATH="$SRC" "$PY" -m moco "$@"); }

# --- fixtures, made once and shared by the before and after calls
if [ ! -d "$FIX/subset" ]; then  # 100 images a class for training, 20 for testing: links into the data set
  "$PY" - "$D" "$FIX/subset" <<'EOF'
import os, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for split, n in (("train", 100), ("test", 20)):
    for cls in sorted(p.name for p in (src / split).iterdir()):
        (dst / split / cls).mkdir(parents=True)
        for f in sorted((src / split / cls).iterdir())[:n]:
            os.symlink(f, dst / split / cls / f.name)
EOF
fi
[ -d "$FIX/shards" ] || moco shards --data "$FIX/subset" --out "$FIX/shards" --shard-size 1MB --no-progress \
  > "$FIX/shards.log" 2>&1
for masks in "" "--segmentations"; do
  dir=$FIX/pasted${masks:+-masks}
  [ -d "$dir" ] || (cd "$SRC" && PYTHONPATH="$SRC" "$PY" benchmarks/make_detection_set.py \
    --source "$FIX/subset/test" --out "$dir" --train 32 --val 16 $masks) > "$dir.log" 2>&1
done
[ -f "$FIX/backbone/checkpoint_last.pt" ] || moco pretrain --preset cifar10-cpu --data "$FIX/subset" \
  --out "$FIX/backbone" --epochs 1 --no-knn --no-progress > "$FIX/backbone.log" 2>&1
[ -f "$FIX/plan/checkpoint_last.pt" ] || moco pretrain --preset cifar10-cpu --data "$FIX/subset" --out "$FIX/plan" \
  --time-budget 40s --no-progress > "$FIX/plan.log" 2>&1

# --- the runs
BB=$FIX/backbone/checkpoint_last.pt
for name in "${RUNS[@]}"; do
  case $name in
    cached) args=(pretrain --preset cifar10-cpu --data "$D" --max-images 2048 --epochs 2);;
    per_image) args=(pretrain --preset cifar10-cpu --set data.pipeline=per_image --data "$D" --max-images 2048
                     --epochs 2);;
    v3) args=(pretrain --preset cifar10-v3-cpu --data "$D" --max-images 2048 --epochs 2);;
    device) args=(pretrain --preset cifar10-cpu --set data.pipeline=device --data "$FIX/subset" --epochs 2);;
    shards) args=(pretrain --preset cifar10-cpu --data "$FIX/shards" --epochs 2 --workers 2);;
    replay) args=(pretrain --preset cifar10-cpu --data "$FIX/subset" --replay-plan "$FIX/plan");;
    finetune_ck) args=(finetune --checkpoint "$BB" --data "$FIX/subset" --labels 50% --epochs 2);;
    finetune_random) args=(finetune --checkpoint "$BB" --init random --data "$FIX/subset" --labels 50% --epochs 2);;
    detect|detect_masks)
      p=$FIX/pasted${name#detect}; p=${p/_masks/-masks}
      args=(detect --checkpoint "$BB" --train-ann "$p/train.json" --train-images "$p/train" --val-ann "$p/val.json"
            --val-images "$p/val" --epochs 2 --batch-size 8 --set detect.min_size=[64]);;
    *) echo "unknown run: $name" >&2; exit 2;;
  esac
  moco "${args[@]}" --out "$OUT/$name" --no-progress --overwrite > "$OUT/$name.log" 2>&1
  echo "$name done"
done
