"""Train the committed ML-1M config and report full-ranking quality, speed and memory.

Protocol (that of the published ML-1M figures): leave-last-out by time, the whole catalogue ranked, the
user's already-seen items removed ("filtered"); the unfiltered variant is reported beside it. Target on
2 CPU cores: HR@10 >= 0.31 and NDCG@10 >= 0.175 within 30 minutes of training. Usage::

    python benchmarks/ml1m_quality.py [--config configs/ml1m.toml] [--set train.epochs=10 ...] [--out FILE.json]

``--set`` overrides config fields (``section.field=value``) for ablations.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

REFERENCE = {  # same machine class (2 cores), seen items masked; see the issue / README for sources
    "RecBole SASRec (len 50, CE, 35 min)": {"hr@10": 0.294, "ndcg@10": 0.174, "hr@100": 0.634},
    "SASRec (published)": {"hr@10": 0.2853, "ndcg@10": 0.1603, "hr@200": 0.7528},
    "HSTU-large (published)": {"hr@10": 0.3294, "ndcg@10": 0.1893, "hr@200": 0.7839},
}


def apply_overrides(cfg, sets: list[str]) -> None:
    for kv in sets:
        key, _, raw = kv.partition("=")
        section, _, name = key.partition(".")
        obj = getattr(cfg, section)
        cur = getattr(obj, name)
        if isinstance(cur, bool):
            val = raw.lower() in ("1", "true", "yes")
        elif isinstance(cur, list):
            val = [v for v in raw.split(",") if v]
        else:
            val = type(cur)(raw)
        setattr(obj, name, val)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/ml1m.toml")
    ap.add_argument("--data", help="prepared ML-1M (default: prepare into a temp dir)")
    ap.add_argument("--run", help="run directory (default: temp)")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=5")
    ap.add_argument("--protocol", default="strict", choices=["strict", "request_time"])
    ap.add_argument("--out", default="benchmarks/results/ml1m_quality.json")
    args = ap.parse_args()

    from twotower import config as cfgmod
    from twotower.data import SequenceData, prepare_movielens
    from twotower.evaluate import evaluate_model, evaluate_popularity
    from twotower.features import Featurizer
    from twotower.train.config import RunConfig
    from twotower.train.load import load_run as load_model
    from twotower.train.trainer import Trainer

    cfg = cfgmod.load(RunConfig, args.config)
    apply_overrides(cfg, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or f"{tmp}/data"
        if not args.data:
            prepare_movielens(data_dir)
        data = SequenceData.load(data_dir)
        run = args.run or f"{tmp}/run"
        t0 = time.perf_counter()
        summary = Trainer(data, cfg, run, overwrite=True).fit(progress=True)
        wall = time.perf_counter() - t0
        model, rc, version = load_model(run)
        feat = Featurizer(data, rc.model)
        res = evaluate_model(model, feat, rc.train.split, "test", protocol=args.protocol)
        val = evaluate_model(model, feat, rc.train.split, "valid", protocol=args.protocol)
        pop = evaluate_popularity(data, rc.train.split, "test")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "hr@10": res["filtered/hr@10"],
        "ndcg@10": res["filtered/ndcg@10"],
        "hr@100": res["filtered/hr@100"],
        "hr@200": res["filtered/hr@200"],
        "mrr": res["filtered/mrr"],
        "valid_hr@10": val["filtered/hr@10"],  # what a selection among runs may read (never the test figures)
        "valid_ndcg@10": val["filtered/ndcg@10"],
        "unfiltered_hr@10": res["all/hr@10"],
        "unfiltered_ndcg@10": res["all/ndcg@10"],
        "unfiltered_hr@100": res["all/hr@100"],
        "unfiltered_hr@200": res["all/hr@200"],
        "popularity_hr@10": pop["filtered/hr@10"],
        "popularity_ndcg@10": pop["filtered/ndcg@10"],
        "train_seconds": round(summary["train_seconds"], 1),
        "wall_seconds_incl_validation": round(wall, 1),
        "epochs": summary["epoch"],
        "best_epoch": summary["best_epoch"],
        "train_examples_per_s": round(summary["examples_per_s"], 1),
        "peak_rss_mib": round(peak, 1),
        "model_version": version,
        "overrides": args.set,
    }
    print(f"\nML-1M test, leave-last-out, {int(res['num_users'])} users, all {data.num_items:,} items ranked")
    print(f"{'':<40}{'HR@10':>8}{'NDCG@10':>9}{'R@100':>8}{'R@200':>8}")
    print(
        f"{'twotower (seen items removed)':<40}{row['hr@10']:>8.4f}{row['ndcg@10']:>9.4f}{row['hr@100']:>8.4f}"
        f"{row['hr@200']:>8.4f}"
    )
    print(
        f"{'twotower (unfiltered)':<40}{row['unfiltered_hr@10']:>8.4f}{row['unfiltered_ndcg@10']:>9.4f}"
        f"{row['unfiltered_hr@100']:>8.4f}{row['unfiltered_hr@200']:>8.4f}"
    )
    print(f"{'popularity (seen items removed)':<40}{row['popularity_hr@10']:>8.4f}{row['popularity_ndcg@10']:>9.4f}")
    for name, ref in REFERENCE.items():
        print(
            f"{name:<40}{ref.get('hr@10', float('nan')):>8.4f}{ref.get('ndcg@10', float('nan')):>9.4f}"
            f"{ref.get('hr@100', float('nan')):>8.4f}{ref.get('hr@200', float('nan')):>8.4f}"
        )
    print(
        f"training {row['train_seconds']:.0f} s ({row['epochs']} epochs, best {row['best_epoch']}), "
        f"{row['train_examples_per_s']:,.0f} examples/s, peak RSS {row['peak_rss_mib']:.0f} MiB"
    )
    target = row["hr@10"] >= 0.31 and row["ndcg@10"] >= 0.175 and row["train_seconds"] <= 1800
    print(f"target HR@10 >= 0.31 and NDCG@10 >= 0.175 within 1800 s: {'MET' if target else 'NOT MET'}")
    row["target_met"] = target
    # An unsplit model sees only the history: both protocols are the same for it. A hybrid's request features
    # follow --protocol (strict: the last history event's time, no surface).
    protocol = args.protocol
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "benchmark": "ml1m_quality",
                "protocol": protocol,
                "seeds": [cfg.train.seed],
                "config": cfgmod.to_dict(cfg),
                **row,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
