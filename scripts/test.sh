#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): set up (scripts/setup.sh), then lint, the layer
# contract, and the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
. .venv/bin/activate
ruff check src tests benchmarks
lint-imports  # the layer contract: [tool.importlinter] in pyproject.toml
python -m pytest "$@"
