"""Content towers on ML-1M: item text, semantic IDs and cold-start items, protocol ``strict``.

One dataset, prepared once with the cold-start protocol (``twotower prepare --dataset ml-1m --text
--semantic-ids 2x16 --cold-items 0.1``): 10 % of the items keep no event but users' last ones, so no model
trains on them, and about 9 % of the test targets are cold items. For each seed, one run after the other
(never side by side), the no-config model (``auto_config``) for ``--budget`` s with:

* ``id``: item id + genre/year tokens (``model.text = false``, ``model.semantic_ids = false``);
* ``text``: + the all-MiniLM-L6-v2 vector of the title and genres through a learned projection;
* ``sid``: + semantic-ID prefix tokens (residual k-means of the text vectors, 2 levels x 16 codes), no text;
* ``both``: text and semantic IDs;

each with item-id dropout ``--id-dropout`` (DropoutNet: the candidate tower learns to place an item without
its id; cold items are then read without it). ``id_nodrop`` is the ID-only model without it. Each run's best
checkpoint (by validation NDCG@10; validation has only warm targets) is scored on the test targets:
``warm/`` (warm targets among all items), ``cold/`` (cold targets among all items), ``cold_only/`` (cold
targets among the cold items only); all with the user's seen items removed, Recall@K = HR@K (one target
per user). ``random`` goes through the same code. Costs: text embedding (items/s, from prepare), the
candidate tower's throughput with and without the text projection, artifact sizes.

Usage::

    python benchmarks/cold_start.py [--budget 150] [--seeds 0 1 2] [--variants id text sid both] [--work DIR]
        [--out FILE]
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
PARTS = ("warm", "cold", "cold_only")
METRICS = ("hr@10", "ndcg@10", "hr@100")
VARIANTS = {
    "id_nodrop": {"text": False, "semantic_ids": False, "id_dropout": 0.0},
    "id": {"text": False, "semantic_ids": False},
    "text": {"text": True, "semantic_ids": False},
    "sid": {"text": False, "semantic_ids": True},
    "both": {"text": True, "semantic_ids": True},
}


def prepare(work: Path, levels: int, codes: int, cold: float) -> tuple[Path, dict]:
    from twotower.data import PrepareConfig, prepare_movielens

    out = work / "data"
    if (out / "manifest.json").is_file():
        return out, json.loads((out / "manifest.json").read_text())
    # a cache of its own: the text is embedded here, so the manifest's items/s is the encoder's real rate
    cfg = PrepareConfig(
        text=True,
        semantic_id_levels=levels,
        semantic_id_codes=codes,
        cold_items=cold,
        text_cache=str(work / "text_cache"),
    )
    t0 = time.perf_counter()
    manifest = prepare_movielens(out, cfg=cfg)
    manifest["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    return out, manifest


def train_variant(data, budget: float, seed: int, out: Path, model: dict, id_dropout: float) -> dict:
    from twotower.evaluate import evaluate_model
    from twotower.evaluate.cold_start import cold_start_report, model_scorer

    summary, net, _, version, feat = train_auto(data, budget, seed, out, model={"id_dropout": id_dropout, **model})
    valid = evaluate_model(net, feat, "loo", "valid", protocol="strict")
    report = cold_start_report(model_scorer(net, feat), data)
    return {
        "valid": {k: round(valid[f"filtered/{k}"], 4) for k in METRICS},
        "test": {f"{p}/{k}": round(report[f"{p}/{k}"], 4) for p in PARTS for k in METRICS},
        "num_users": {p: int(report[f"{p}/num_users"]) for p in PARTS},
        "epochs": summary["epoch"],
        "train_seconds": round(summary["train_seconds"], 1),
        "examples_per_s": round(summary["examples_per_s"], 1),
        "model_version": version,
        "_model": (net, feat),
    }


def tower_throughput(net, feat, repeats: int = 3) -> float:
    """Candidate-tower items/s over the whole corpus (eval mode, one process), best of ``repeats``."""
    import numpy as np
    import torch

    n = feat.data.num_items
    best = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            net.encode_items(feat.items(np.arange(n)))
            best = max(best, n / (time.perf_counter() - t0))
    return round(best, 1)


def mean_std(values: list[float]) -> list[float]:
    return [round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=150.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--id-dropout", type=float, default=0.3)
    # fixed before any run (not tuned): coarse codes that many items share (~230 items per level-1 code and ~14
    # per level-2 prefix on ML-1M), so no level is fine enough to act as a second item id
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--codes", type=int, default=16)
    ap.add_argument("--cold", type=float, default=0.1)
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cold_start.json"))
    args = ap.parse_args()

    from twotower.data.dataset import SequenceData
    from twotower.evaluate.cold_start import cold_start_report, random_scores

    work = Path(args.work or tempfile.mkdtemp(prefix="cold_start_"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir, manifest = prepare(work, args.levels, args.codes, args.cold)
    data = SequenceData.load(data_dir)
    rnd = cold_start_report(random_scores(data.num_items, 0), data)
    results: dict = {
        "random": {f"{p}/{k}": round(rnd[f"{p}/{k}"], 4) for p in PARTS for k in METRICS},
        "runs": {v: [] for v in args.variants},
    }
    throughput: dict[str, float] = {}
    for seed in args.seeds:
        for v in args.variants:
            drop = 0.0 if v == "id_nodrop" else args.id_dropout
            t0 = time.perf_counter()
            res = train_variant(data, args.budget, seed, work / f"{v}_s{seed}", VARIANTS[v], drop)
            net, feat = res.pop("_model")
            if seed == args.seeds[0]:
                throughput[v] = tower_throughput(net, feat)
            res["wall_seconds"] = round(time.perf_counter() - t0, 1)
            results["runs"][v].append({"seed": seed, **res})
            t = res["test"]
            print(
                f"seed {seed} {v:<9} valid ndcg@10 {res['valid']['ndcg@10']:.4f} | warm hr@10 {t['warm/hr@10']:.4f} "
                f"r@100 {t['warm/hr@100']:.4f} | cold r@100 {t['cold/hr@100']:.4f} hr@10 {t['cold/hr@10']:.4f} | "
                f"cold-only r@100 {t['cold_only/hr@100']:.4f} ({res['epochs']} ep, {res['train_seconds']} s)",
                flush=True,
            )
    table = {}
    for v, runs in results["runs"].items():
        table[v] = {key: mean_std([r["test"][key] for r in runs]) for key in runs[0]["test"]}
        table[v]["valid/ndcg@10"] = mean_std([r["valid"]["ndcg@10"] for r in runs])
    print("\nstrict, seen removed, mean ± std over seeds", args.seeds, f"({args.budget:.0f} s each):")
    head = "".join(f"{p + '/' + k:>20}" for p in PARTS for k in METRICS)
    print(f"{'variant':<10}{head}")
    print(f"{'random':<10}" + "".join(f"{results['random'][p + '/' + k]:>20.4f}" for p in PARTS for k in METRICS))
    for v, row in table.items():
        cells = "".join(f"{row[p + '/' + k][0]:>13.4f}±{row[p + '/' + k][1]:.4f}" for p in PARTS for k in METRICS)
        print(f"{v:<10}{cells}")
    sizes = {
        name: (data_dir / name).stat().st_size
        for name in ("item_text.npy", "item_sid.npy", "codebook.safetensors", "item_hash.npy")
        if (data_dir / name).is_file()
    }
    best_content = max(
        (v for v in table if v not in ("id", "id_nodrop")), key=lambda v: table[v]["valid/ndcg@10"][0], default=None
    )
    id_row = table.get("id")
    summary = {
        "text_items_per_s": (manifest.get("text") or {}).get("items_per_s"),
        "tower_items_per_s": throughput,
        "cold_recall_at_100": {v: row["cold/hr@100"][0] for v, row in table.items()},
        "warm_recall_at_100": {v: row["warm/hr@100"][0] for v, row in table.items()},
        "cold_only_recall_at_100": {v: row["cold_only/hr@100"][0] for v, row in table.items()},
        "warm_ndcg_at_10": {v: row["warm/ndcg@10"][0] for v, row in table.items()},
    }
    if id_row and best_content:
        c = table[best_content]
        summary.update(
            {
                "best_content_variant_by_valid": best_content,
                "cold_recall_ratio_vs_id": round(c["cold/hr@100"][0] / max(id_row["cold/hr@100"][0], 1e-9), 3),
                "cold_to_warm_recall_ratio": round(c["cold/hr@100"][0] / max(c["warm/hr@100"][0], 1e-9), 3),
                "warm_ndcg_delta_vs_id": round(c["warm/ndcg@10"][0] - id_row["warm/ndcg@10"][0], 4),
                "warm_ndcg_id_std": id_row["warm/ndcg@10"][1],
            }
        )
    out = {
        "benchmark": "cold_start",
        "protocol": "strict",
        "seeds": args.seeds,
        "budget_s": args.budget,
        "id_dropout": args.id_dropout,
        "dataset": {
            "cold_items": manifest.get("cold_items"),
            "codebook": manifest.get("codebook"),
            "text": manifest.get("text"),
            "num_items": manifest.get("num_items"),
        },
        "artifact_bytes": sizes,
        "results": results,
        "table": table,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("\nsummary:", json.dumps(summary, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
