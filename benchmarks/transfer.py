"""Do the no-config defaults transfer? twotower with no ``--config`` beside a plain SASRec, on logs never tuned on.

For each log of ``benchmarks/transfer_logs.py`` and each seed, in one process, one after the other (never side
by side: two trainings sharing 2 cores measure nothing):

* **twotower**: ``twotower.train.auto.auto_config`` (what ``twotower train`` does without ``--config``), the
  time budget given here, the best checkpoint by validation NDCG@10;
* **peer**: ``benchmarks/sasrec_peer.py``, a plain SASRec (CE over all items, length 50, 2 layers), the same
  training-time budget, the best epoch by validation NDCG@10;
* **popularity** (training counts).

All are scored by the same code: leave-last-out test split, every item ranked, the user's seen items
removed (``[all]``: nothing removed). Protocol ``strict``: the user vector sees nothing of the test event
(the hybrid's request time is the last history event's). Nothing here is selected on test.

    python benchmarks/transfer.py [--budget 120] [--seeds 0 1 2] [--logs ml-100k ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sasrec_peer  # noqa: E402
import transfer_logs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LOGS = ["ml-100k", "ml-1m-short", "synth-large", "synth-seq"]
KEYS = ("filtered/hr@10", "filtered/ndcg@10", "filtered/hr@100", "all/hr@10", "all/ndcg@10")


def run_twotower(data_root: Path, budget: float, seed: int, out: Path) -> dict:
    """Train with the no-config defaults, then score the best checkpoint on valid and test (strict)."""
    from twotower.data import SequenceData
    from twotower.evaluate import evaluate_model
    from twotower.features import Featurizer
    from twotower.train.auto import auto_config
    from twotower.train.load import load_run
    from twotower.train.trainer import Trainer

    data = SequenceData.load(data_root)
    cfg, reasons = auto_config(data, budget)
    cfg.train.seed = seed
    summary = Trainer(data, cfg, out, overwrite=True).fit(progress=False)
    model, rc, version = load_run(out)
    feat = Featurizer(data, rc.model)
    res = {split: evaluate_model(model, feat, rc.train.split, split, protocol="strict") for split in ("valid", "test")}
    return {
        **res,
        "epochs": summary["epoch"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": round(summary["train_seconds"], 1),
        "examples_per_s": round(summary["examples_per_s"], 1),
        "stop_reason": summary["stop_reason"],
        "model_version": version,
        "choices": reasons,
    }


def mean_std(runs: list[dict], split: str = "test") -> dict[str, list[float]]:
    """``{metric: [mean, std]}`` over seeds (population std; 3 seeds)."""
    return {
        k: [round(float(np.mean(v)), 4), round(float(np.std(v)), 4)]
        for k in KEYS
        for v in [[r[split][k] for r in runs]]
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per run, both systems")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--logs", nargs="+", default=DEFAULT_LOGS, choices=list(transfer_logs.LOGS))
    p.add_argument("--cache", default=str(REPO / "runs" / "transfer"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "transfer.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from twotower.data import SequenceData
    from twotower.evaluate import evaluate_popularity

    cache, out_path = Path(args.cache), Path(args.out)
    result: dict = {
        "benchmark": "transfer",
        "protocol": "strict",
        "seeds": args.seeds,
        "budget_s": args.budget,
        "split": "loo: test = each user's last event, valid = the one before; all items ranked",
        "logs": {},
    }
    t_all = time.perf_counter()
    for name in args.logs:
        root = transfer_logs.prepare_log(name, cache)
        data = SequenceData.load(root)
        entry = {
            "description": transfer_logs.LOGS[name],
            "stats": transfer_logs.stats(root),
            "twotower": [],
            "peer": [],
        }
        entry["popularity"] = {k: round(v, 4) for k, v in evaluate_popularity(data, "loo", "test").items()}
        result["logs"][name] = entry
        for seed in args.seeds:
            logging.info("%s seed %d: twotower (no config), %.0f s budget", name, seed, args.budget)
            entry["twotower"].append(run_twotower(root, args.budget, seed, cache / name / f"run-seed{seed}"))
            logging.info("%s seed %d: plain SASRec peer, %.0f s budget", name, seed, args.budget)
            entry["peer"].append(sasrec_peer.run_sasrec(root, args.budget, seed=seed, progress=False))
            write_json(out_path, result)  # partial results survive a crash
        entry["twotower_test"] = mean_std(entry["twotower"])
        entry["peer_test"] = mean_std(entry["peer"])
    result["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    result["summary"] = summarize(result["logs"])
    write_json(out_path, result)
    print_table(result)
    print(f"wrote {out_path}")
    return 0


def summarize(logs: dict) -> dict:
    """The figures the issue checks: twotower >= peer in HR@10 and NDCG@10 (means over seeds) on every log."""
    ratios = {}
    for name, e in logs.items():
        if "twotower_test" not in e:
            continue
        for metric in ("hr@10", "ndcg@10"):
            t, q = e["twotower_test"][f"filtered/{metric}"][0], e["peer_test"][f"filtered/{metric}"][0]
            ratios[f"{name.replace('-', '_')}_{metric.replace('@', '')}_ratio"] = round(t / q, 4) if q else None
    hr = [v for k, v in ratios.items() if k.endswith("hr10_ratio") and v is not None]
    nd = [v for k, v in ratios.items() if k.endswith("ndcg10_ratio") and v is not None]
    return {
        "logs": len(hr),
        "twotower_ge_peer_on_every_log": bool(hr and nd and min(hr) >= 1.0 and min(nd) >= 1.0),
        "min_hr10_ratio": min(hr) if hr else None,
        "min_ndcg10_ratio": min(nd) if nd else None,
        **ratios,
    }


def print_table(result: dict) -> None:
    print(f"\nstrict protocol, test split, mean ± std over seeds {result['seeds']}, {result['budget_s']:.0f} s budget")
    print(f"{'log':<16}{'system':<12}{'HR@10':>18}{'NDCG@10':>18}{'HR@100':>18}")
    for name, e in result["logs"].items():
        for system in ("twotower", "peer"):
            m = e.get(f"{system}_test")
            if m:
                cells = "".join(f"{m[k][0]:>11.4f} ±{m[k][1]:.4f}" for k in KEYS[:3])
                print(f"{name:<16}{system:<12}{cells}")
        pop = e["popularity"]
        print(f"{name:<16}{'popularity':<12}" + "".join(f"{pop[k]:>18.4f}" for k in KEYS[:3]))
    print(json.dumps(result.get("summary", {}), indent=2))


def write_json(path: Path, result: dict) -> None:
    """``result`` as indented JSON at ``path``, written atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
