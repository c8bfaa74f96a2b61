#!/usr/bin/env bash
# Sets up and runs the main job end to end on MovieLens-1M: prepare -> train -> evaluate.
# Usage: bash scripts/quickstart.sh [WORK_DIR]   (about 6 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
WORK=${1:-runs/quickstart}
mkdir -p "$WORK"
twotower prepare --dataset ml-1m --out "$WORK/data"
twotower train --data "$WORK/data" --config configs/ml1m_quick.toml --out "$WORK/run"
twotower evaluate --run "$WORK/run"
