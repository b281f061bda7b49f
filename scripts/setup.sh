#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with torch, torchvision and this package.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev,onnx,mlflow,wandb,map]'  # the tests cover the extras
