"""twotower from Python: a DataFrame of events -> a trained model -> recommendations, in six calls.

    python examples/quickstart.py                     # a synthetic log of 2,000 users, 60 s of training
    python examples/quickstart.py --users 300 --items 200 --events 8000 --budget 5   # what the tests run

Every call is the library the CLI uses; ``Retriever.recommend`` is the service's own retrieval path.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

import twotower
from twotower.data.synth import generate


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--events", type=int, default=60000)
    p.add_argument("--budget", type=float, default=60.0, help="training seconds")
    p.add_argument("--work", help="directory for the dataset, run and artifacts (default: temporary)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="twotower-example-"))

    # 1. events as a pandas DataFrame (here a synthetic log; yours comes from wherever it lives)
    generate(args.users, args.items, args.events, work / "log.parquet", seed=0, topics=20, progress=False)
    events = pd.read_parquet(work / "log.parquet")
    print(f"{len(events):,} events, columns {list(events.columns)}")

    # 2. prepare: column names and 0/1 action columns come from the config (a dict works)
    data = twotower.prepare(events, config={"log": {"actions": ["click", "like"], "surface": "surface"}},
                            out=work / "data")  # fmt: skip
    print(f"prepared {data.num_users:,} users, {data.num_items:,} items -> {data.root}")

    # 3. train with the defaults scaled to this dataset
    run = twotower.train(data, out=work / "run", time_budget=args.budget, progress=False)
    print(f"trained {run.summary['epoch']} epochs in {run.summary['train_seconds']:.0f} s -> {run.path}")

    # 4. evaluate the checkpoint chosen on validation, on the test split, beside popularity
    m = run.evaluate(protocol="strict")
    print(f"test HR@10 {m['filtered/hr@10']:.4f} NDCG@10 {m['primary']:.4f} (popularity "
          f"{m['popularity']['filtered/hr@10']:.4f}), protocol {m['protocol']}")  # fmt: skip

    # 5. serve it in-process: export, cache user states, build and publish an index
    with twotower.Retriever.from_run(run, work / "artifacts", backend="exact") as retriever:
        # 6. recommend for a known user, and for a new one from the events they just had
        user = str(events.user_id.iloc[0])
        known = retriever.recommend(user, k=5)
        print(f"user {user} ({known.path}): {list(known.item_ids)}")
        recent = [{"item_id": str(i), "timestamp": 1_700_000_000 + n} for n, i in enumerate(events.item_id[:3])]
        new = retriever.recommend("someone-new", recent_events=recent, k=5)
        print(f"a new user after {[e['item_id'] for e in recent]} ({new.path}): {list(new.item_ids)}")
    return {"metrics": m, "known": known, "new": new, "work": work}


if __name__ == "__main__":
    main()
