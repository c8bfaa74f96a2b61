#!/usr/bin/env bash
# Sets up and runs the main job end to end on MovieLens-1M. Usage: bash scripts/quickstart.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
WORK=${1:-runs/quickstart}
mkdir -p "$WORK"
twotower prepare --dataset ml-1m --out "$WORK/data"
