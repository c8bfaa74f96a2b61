"""The funnel on ML-1M: retrieval alone vs retrieval + the ranker re-scoring the top K' (50, 100, 200).

For each seed, one step after the other (never side by side):

1. the retriever: ``auto_config`` (what ``twotower train`` does with no config) for ``--budget`` s;
2. its candidates: ``twotower mine-negatives --from 1 --to 100 --count 16`` (the ranker's training lists);
3. the ranker: ``twotower train-ranker`` defaults (2 layers, the user's last 50 events, the retriever's score as
   its prior) for ``--ranker-budget`` s;
4. every valid and test target (strict: the request sees the history before the target, nothing of it),
   seen items removed: the retriever's top 200 and their retrieval scores, the ranker's score of each, and
   the reranked top K' for each K' (one ranker pass: a candidate's score does not depend on the others, so
   the scores of the top 50 are a prefix of those of the top 200).

A target outside the shortlist keeps its retrieval rank, so HR@K' is the same for both and a gain shows at the
top. Nothing is chosen here; valid and test are both printed.

**Serving cost** (after the seeds, or alone with ``--latency-only`` over an earlier ``--work``): seed 0's
retriever becomes an artifact root (``serve-prepare``: exact index), its ranker is published, and requests run
through the service's own request path (:class:`twotower.Retriever`, what ``POST /v1/retrieve`` runs) one at a
time, k = 10, for K' = 0 (no rerank), 50, 100, 200: p50 / p99 milliseconds per request, in one process.

Usage::

    python benchmarks/rerank.py --data PREPARED_ML1M [--budget 450] [--ranker-budget 300] [--seeds 0 1 2]
        [--work DIR] [--out FILE] [--latency-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from runs import train_auto  # benchmarks/runs.py: this directory is on sys.path

REPO = Path(__file__).resolve().parents[1]
KEYS = ("hr@10", "ndcg@10", "mrr")
SHORTLISTS = (50, 100, 200)


def one_seed(data, seed: int, budget: float, ranker_budget: float, work: Path) -> dict:
    from twotower.jobs.mine import mine_negatives
    from twotower.train.hard_negatives import MineConfig
    from twotower.train.ranker import RankerConfig, rerank_metrics, train_ranker

    run, mined, ranker = work / f"retriever_s{seed}", work / f"mined_s{seed}", work / f"ranker_s{seed}"
    summary, *_ = train_auto(data, budget, seed, run)
    t0 = time.perf_counter()
    mine_negatives(run, mined, MineConfig(rank_from=1, rank_to=100, count=16, seed=seed), data, progress=False)
    mine_s = time.perf_counter() - t0
    rs = train_ranker(run, mined, ranker, RankerConfig(time_budget_s=ranker_budget, steps=10**7, seed=seed), data,
                      progress=False)  # fmt: skip
    out = {"retriever_train_seconds": round(summary["train_seconds"], 1), "mining_seconds": round(mine_s, 1),
           "ranker_train_seconds": rs["train_seconds"], "ranker_steps": rs["step"], "ranker_loss": rs["loss"],
           "ranker_version": rs["ranker_version"], "retriever_version": rs["retriever_version"]}  # fmt: skip
    for split in ("valid", "test"):
        t0 = time.perf_counter()
        m = rerank_metrics(run, ranker, split, SHORTLISTS, data=data)
        out[split] = {"retrieval": {k: round(m["retrieval"][k], 4) for k in KEYS},
                      **{f"rerank_{n}": {k: round(m["rerank"][n][k], 4) for k in KEYS} for n in SHORTLISTS},
                      "eval_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        r = out[split]
        print(f"seed {seed} {split}: retrieval NDCG@10 {r['retrieval']['ndcg@10']:.4f} | " + " | ".join(
            f"K'={n} {r[f'rerank_{n}']['ndcg@10']:.4f}" for n in SHORTLISTS), flush=True)  # fmt: skip
    return out


def serving_cost(data, work: Path, requests: int = 300) -> dict:
    """p50/p99 ms of one request through the service path, without rerank and with K' = 50/100/200."""
    import numpy as np

    import twotower
    from twotower.jobs.serving import build_artifacts, publish_ranker

    root = work / "artifacts_s0"
    if not (root / "index").is_dir():
        build_artifacts(work / "retriever_s0", root, backend="exact")
    publish_ranker(work / "ranker_s0", root)
    users = data.user_ids().astype(str)
    pick = np.random.default_rng(0).choice(len(users), requests, replace=False)
    out = {}
    with twotower.Retriever.load(root) as r:
        for shortlist in (0, 50, 100, 200):
            times = []
            for u in pick:
                t0 = time.perf_counter()
                rec = r.recommend(users[u], k=10, rerank=shortlist or None)
                times.append(1000 * (time.perf_counter() - t0))
                assert len(rec.item_ids) == 10 and (shortlist == 0) == (rec.ranker_version is None)
            warm = np.array(times[20:])  # the first requests warm caches up
            out[f"k_prime_{shortlist}"] = {"p50_ms": round(float(np.percentile(warm, 50)), 2),
                                           "p99_ms": round(float(np.percentile(warm, 99)), 2)}  # fmt: skip
            print(f"serving, one request at a time, k=10, K'={shortlist or 'none'}: p50 "
                  f"{out[f'k_prime_{shortlist}']['p50_ms']} ms, p99 {out[f'k_prime_{shortlist}']['p99_ms']} ms",
                  flush=True)  # fmt: skip
    return {"items": int(data.num_items), "requests": requests, "index": "exact", **out}


def serving_summary(cost: dict) -> dict:
    """The summary keys of :func:`serving_cost`'s figures: ``serve_k_prime_<K'>_p50_ms`` / ``_p99_ms``."""
    return {f"serve_{k}_{q}": v[q] for k, v in cost.items() if k.startswith("k_prime") for q in ("p50_ms", "p99_ms")}


def mean_std(values: list[float]) -> tuple[float, float]:
    return round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared ML-1M (`twotower prepare --dataset ml-1m`)")
    p.add_argument("--budget", type=float, default=450.0, help="retriever training seconds")
    p.add_argument("--ranker-budget", type=float, default=300.0, help="ranker training seconds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", help="directory for runs (default: temp)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rerank.json"))
    p.add_argument("--latency-only", action="store_true", help="only the serving cost, over --work's seed 0")
    args = p.parse_args()
    from twotower.data import SequenceData

    data = SequenceData.load(args.data)
    if args.latency_only:
        if not args.work:
            p.error("--latency-only needs --work: the directory of an earlier run")
        cost = serving_cost(data, Path(args.work))
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.is_file() else {"benchmark": "rerank", "protocol": "strict",
                                                                     "seeds": [0], "summary": {}}  # fmt: skip
        result["serving"] = cost
        result["summary"].update(serving_summary(cost))
        out.write_text(json.dumps(result, indent=2))
        print(f"-> {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        runs = [one_seed(data, s, args.budget, args.ranker_budget, work) for s in args.seeds]
        cost = serving_cost(data, work)
    summary: dict = {}
    print(f"\nML-1M, strict, seen items removed, {len(runs)} seeds (mean ± std); retrieval vs + rerank at K'")
    for split in ("valid", "test"):
        for k in KEYS:
            base = mean_std([r[split]["retrieval"][k] for r in runs])
            name = k.replace("@", "_at_")
            summary[f"retrieval_{split}_{name}"] = base[0]
            row = [f"{split} {k}: retrieval {base[0]:.4f}±{base[1]:.4f}"]
            for n in SHORTLISTS:
                rr = mean_std([r[split][f"rerank_{n}"][k] for r in runs])
                summary[f"rerank_{n}_{split}_{name}"] = rr[0]
                summary[f"rerank_{n}_{split}_{name}_gain"] = round(rr[0] / base[0] - 1, 4) if base[0] else None
                row.append(f"K'={n} {rr[0]:.4f}±{rr[1]:.4f} ({100 * (rr[0] / base[0] - 1):+.1f} %)")
            print(" | ".join(row))
    summary["ndcg_at_10_gain_test_k100"] = summary["rerank_100_test_ndcg_at_10_gain"]
    summary["ranker_train_seconds"] = mean_std([r["ranker_train_seconds"] for r in runs])[0]
    summary["ranker_steps"] = mean_std([r["ranker_steps"] for r in runs])[0]
    summary["target_gain"] = 0.08
    summary["target_met"] = bool(summary["ndcg_at_10_gain_test_k100"] >= 0.08)
    summary.update(serving_summary(cost))
    result = {"benchmark": "rerank", "protocol": "strict", "seeds": args.seeds, "dataset": str(args.data),
              "retriever_budget_s": args.budget, "ranker_budget_s": args.ranker_budget,
              "shortlists": list(SHORTLISTS), "summary": summary, "runs": runs, "serving": cost,
              "machine": "2 CPU cores, nothing else running"}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
