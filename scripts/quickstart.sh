#!/usr/bin/env bash
# Sets up and runs the main job end to end on MovieLens-1M:
#   prepare -> train (no config: the defaults read from the data) -> evaluate -> serving artifacts (embeddings,
#   the users' vectors in the feature store, HNSW index) -> start the service, answer two requests (a user with a
#   cached vector, a new user with two events), stop it, and print the command that serves it.
# Usage: bash scripts/quickstart.sh [WORK_DIR]   (about 11 minutes on 2 CPU cores, setup included)
set -euo pipefail
START=$SECONDS
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
WORK=${1:-runs/quickstart}
mkdir -p "$WORK"
twotower prepare --dataset ml-1m --out "$WORK/data"
# no --config: the defaults scaled to the data (the unsplit tower); a progress line every 30 s
twotower train --data "$WORK/data" --out "$WORK/run" --overwrite --time-budget 450 --no-progress
twotower evaluate --run "$WORK/run" --protocol strict   # strict: nothing of the test event reaches the user
twotower serve-prepare --run "$WORK/run" --artifacts "$WORK/serve" --backend hnsw --no-progress

# The service refuses a default admin token outside dev mode: make one for this demo.
export TWOTOWER_ADMIN_TOKEN=${TWOTOWER_ADMIN_TOKEN:-$(python -c 'import secrets; print(secrets.token_urlsafe(32))')}
PORT=${PORT:-8765}
twotower serve --artifacts "$WORK/serve" --port "$PORT" > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
python - "$PORT" <<'PY'
import json, sys, time, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):  # wait until the artifacts are loaded
    try:
        urllib.request.urlopen(base + "/readyz", timeout=1)
        break
    except OSError:
        time.sleep(0.5)
events = [
    {"item_id": "Toy Story (1995)", "actions": ["rated", "liked", "loved"], "timestamp": 978824330},
    {"item_id": "Aladdin (1992)", "actions": ["rated", "liked"], "timestamp": 978824351},
]
# user 1 has a cached vector; "new-user" has none: the model encodes the two events it sends
for body in ({"user_id": "1", "k": 5}, {"user_id": "new-user", "context": {"recent_events": events}, "k": 5}):
    print("POST /v1/retrieve", json.dumps(body))
    req = urllib.request.Request(base + "/v1/retrieve", json.dumps(body).encode(), {"content-type": "application/json"})
    got = json.load(urllib.request.urlopen(req, timeout=10))
    print(f"  path {got['path']}, model {got['model_version']}:", "; ".join(x["item_id"] for x in got["items"]))
PY
python - "$WORK/run/eval_test.json" "$((SECONDS - START))" <<'PY'
import json, sys

e = json.load(open(sys.argv[1]))
m, p = e["model"], e["popularity"]
print(f"\nserved model {e['model_version']}: test HR@10 {m['filtered/hr@10']:.4f}, NDCG@10 {m['filtered/ndcg@10']:.4f} "
      f"(protocol {e['protocol']}, all items ranked, seen removed); popularity HR@10 {p['filtered/hr@10']:.4f}, "
      f"NDCG@10 {p['filtered/ndcg@10']:.4f}; quick start took {int(sys.argv[2]) / 60:.1f} min")
PY
echo
echo "Serve it yourself:  . .venv/bin/activate && TWOTOWER_ADMIN_TOKEN=<a secret of 16+ chars> twotower serve --artifacts $WORK/serve"
echo "Look at what a user gets in a browser: add TWOTOWER_DEMO=1 to that command and open http://127.0.0.1:8000/demo"
