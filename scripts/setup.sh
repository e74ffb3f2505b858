#!/usr/bin/env bash
# Create .venv with todal installed. On a machine without an NVIDIA GPU the pinned CPU wheel of
# torch is installed first, so pip never pulls the multi-GB CUDA build. On Debian (as root) the
# Fashion-MNIST package is installed too: the real-data benchmark and end-to-end test read it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q torch
  else
    .venv/bin/python -m pip install -q torch==2.13.0
  fi
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# The BatchBALD reference implementation, for tests only: its own requirements (torchvision, a CUDA torch) would
# replace the CPU torch, so it comes without them; its imports beyond torch (toma, psutil) are in the dev extra.
.venv/bin/python -m pip install -q --no-deps "batchbald_redux==2.0.5"
# Debian packages: Fashion-MNIST (real-data benchmark and end-to-end test), Chromium (browser tests of
# the labeling page).
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  for try in 1 2 3; do
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
      >/dev/null 2>&1 && break
    sleep 5
  done
fi
# Label Studio in its own virtual environment (its pins never touch todal's): the export/import test
# runs a real server.
if [ -f scripts/setup_label_studio.sh ]; then bash scripts/setup_label_studio.sh; fi
touch .venv/.ok
