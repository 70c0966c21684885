#!/usr/bin/env bash
# The main job: a short MAE pretraining of a tiny ViT on scikit-image's sample photos (a few CPU minutes).
# Extra arguments are passed to `mimkit pretrain`, e.g. `bash scripts/quickstart.sh train.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/mimkit pretrain --config mae/vit_tiny_samples "$@"
