#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, plus the type and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export OPENBLAS_NUM_THREADS=1  # see src/parley/cli.py: keeps BLAS from oversubscribing 2 cores
.venv/bin/ruff check src tests
.venv/bin/mypy
.venv/bin/pytest -q "$@"
