"""How the no-config defaults were chosen: variants of ``auto_config`` scored on a dev log's **validation** split.

The transfer benchmark (``benchmarks/transfer.py``) checks the defaults on logs they were never chosen on. The
choices themselves are made here, on the dev log ``ml-1m-last30`` of ``benchmarks/transfer_logs.py`` (each
ML-1M user's last 30 events; never a checked log), by validation NDCG@10 under the ``strict`` protocol. The
test split is never scored. A variant is a set of overrides of the ``[model]`` / ``[train]`` fields that
``auto_config`` picks, e.g. ``train.temperature=0.1``; the plain-SASRec peer runs beside them for reference.

    python benchmarks/defaults_dev.py --variant base= --variant tau01=train.temperature=0.1 [--budget 120]
        [--seeds 0] [--log ml-1m-last30] [--peer] [--out FILE]
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sasrec_peer  # noqa: E402
import transfer_logs  # noqa: E402
from transfer import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = ("filtered/hr@10", "filtered/ndcg@10", "filtered/hr@100")


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``name=section.field=value,section.field=value`` -> (name, {"section.field": value})."""
    name, _, rest = text.partition("=")
    overrides: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def run_variant(data_root: Path, overrides: dict, budget: float, seed: int, out: Path) -> dict:
    """Train ``auto_config`` + ``overrides`` for ``budget`` s; score the best checkpoint on validation only."""
    from twotower.data import SequenceData
    from twotower.evaluate import evaluate_model
    from twotower.features import Featurizer
    from twotower.train.auto import auto_config
    from twotower.train.load import load_run
    from twotower.train.trainer import Trainer

    data = SequenceData.load(data_root)
    cfg, _ = auto_config(data, budget)
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        target = getattr(cfg, section)
        if not hasattr(target, field):
            raise SystemExit(f"unknown field {key!r}")
        setattr(target, field, value)
    cfg.train.seed = seed
    cfg.model.__post_init__()
    cfg.train.__post_init__()
    summary = Trainer(data, cfg, out, overwrite=True).fit(progress=False)
    model, rc, _ = load_run(out)
    valid = evaluate_model(model, Featurizer(data, rc.model), rc.train.split, "valid", protocol="strict")
    return {
        "valid": {k: round(v, 4) for k, v in valid.items()},
        "epochs": summary["epoch"],
        "best_epoch": summary["best_epoch"],
        "examples_per_s": round(summary["examples_per_s"], 1),
        "stop_reason": summary["stop_reason"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", default=[], help="name=section.field=value,...")
    p.add_argument("--log", default="ml-1m-last30", choices=list(transfer_logs.LOGS))
    p.add_argument("--budget", type=float, default=120.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--peer", action="store_true", help="also run the plain-SASRec peer")
    p.add_argument("--cache", default=str(REPO / "runs" / "transfer"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "defaults_dev.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = transfer_logs.prepare_log(args.log, Path(args.cache))
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    result.update({"benchmark": "defaults_dev", "protocol": "strict", "split": "valid", "log": args.log})
    result.setdefault("variants", {})
    result["budget_s"], result["seeds"] = args.budget, args.seeds
    variants = [parse_variant(v) for v in args.variant]
    if args.peer:
        variants.append(("peer", {}))
    for name, overrides in variants:
        runs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            if name == "peer":
                r = sasrec_peer.run_sasrec(root, args.budget, seed=seed, progress=False)
                r = {"valid": {k: round(v, 4) for k, v in r["valid"].items()}, "epochs": r["epochs"]}
            else:
                r = run_variant(root, overrides, args.budget, seed, Path(args.cache) / args.log / f"dev-{name}")
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            runs.append(r)
        mean = {k: round(float(np.mean([r["valid"][k] for r in runs])), 4) for k in KEYS}
        result["variants"][name] = {"overrides": overrides, "runs": runs, "valid_mean": mean}
        print(
            f"{name:<16} " + " ".join(f"{k.split('/')[1]} {mean[k]:.4f}" for k in KEYS) + f"  {json.dumps(overrides)}",
            flush=True,
        )
        # After every variant, with the summary (valid NDCG@10 per variant): a crash later loses nothing finished.
        summary = result.setdefault("summary", {})
        for n, v in result["variants"].items():
            summary[n.replace("-", "_")] = v["valid_mean"]["filtered/ndcg@10"]
        write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
