#!/usr/bin/env bash
# Set up (if needed), then run a whole simulated call on the local default stack: a scripted caller
# books a dental appointment with the agent, through a fake FreeSWITCH that speaks ESL and
# mod_audio_stream over real sockets. Extra arguments go to `parley simulate` (e.g. barge-in).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
scenario=${1:-booking}
shift || true
.venv/bin/parley simulate "$scenario" --json out/simulate.json --wav out/simulate.wav "$@"
