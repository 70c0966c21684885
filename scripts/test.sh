#!/usr/bin/env bash
# The test suite: lint, then pytest (parity, properties, round trips, engine, 2-process DDP on CPU).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check mimkit tests benchmarks
exec .venv/bin/python -m pytest "$@"
