#!/usr/bin/env bash
# Set up (if needed), then run a whole simulated call: parley as `parley serve` runs it, against a
# fake FreeSWITCH that speaks ESL and mod_audio_stream over real sockets.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/parley demo "$@"
