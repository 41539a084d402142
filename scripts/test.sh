#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, plus the type and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/mypy
.venv/bin/pytest -q "$@"
