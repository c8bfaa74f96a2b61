"""Matryoshka embeddings and adaptive retrieval: quality per prefix on ML-1M, speed and memory at 1M items.

**Quality** (protocol ``strict``, seen items removed, leave-last-out; valid and test printed, nothing chosen on
test). One after the other, each for ``--budget`` s of training with the no-config defaults (``auto_config``):

* ``mrl``: the 64-dim model with ``train.matryoshka_dims = [16, 32]`` (the same loss on each prefix, weight 1),
  scored at 16, 32 and 64 dims (``evaluate_model(dim=...)``: both towers' prefixes, unit again);
* ``d16`` / ``d32`` / ``d64``: models trained at that width alone (``model.dim``);

and the training cost of the extra loss terms (examples/s of ``mrl`` against ``d64``).

**Speed and memory at 1M items** (one search thread): synthetic Matryoshka-shaped unit vectors (clustered, each
coordinate's spread falling with its index, so a prefix carries most of a vector), D = 64; exact full-width
search is the oracle. HNSW over all 64 dims against adaptive indexes (HNSW over the first 16 or 32 dims, a
``shortlist x k`` candidate list re-scored with the float16 full vectors): build time, bytes, recall@10/@100 and
p50/p99 per query. Usage::

    python benchmarks/matryoshka.py --data PREPARED_ML1M [--budget 150] [--seeds 0] [--items 1000000]
        [--skip-quality | --skip-index] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from runs import train_auto  # benchmarks/runs.py: this directory is on sys.path

REPO = Path(__file__).resolve().parents[1]
KEYS = ("filtered/hr@10", "filtered/ndcg@10", "filtered/hr@100")
WIDTHS = (16, 32, 64)


def train(data, budget: float, seed: int, out: Path, dim: int, matryoshka: list[int]) -> dict:
    from twotower.evaluate import evaluate_model

    summary, model, _, _, feat = train_auto(data, budget, seed, out, {"dim": dim}, {"matryoshka_dims": matryoshka})
    scored = {}
    for d in [*matryoshka, dim]:
        res = {s: evaluate_model(model, feat, "loo", s, protocol="strict", dim=d) for s in ("valid", "test")}
        scored[d] = {s: {k: round(res[s][k], 4) for k in KEYS} for s in res}
    return {
        "by_dim": scored,
        "examples_per_s": round(summary["examples_per_s"], 1),
        "epochs": summary["epoch"],
        "train_seconds": round(summary["train_seconds"], 1),
    }


def quality(data_dir: str, budget: float, seeds: list[int], work: Path) -> dict:
    from twotower.data import SequenceData

    data = SequenceData.load(data_dir)
    runs: dict[str, list[dict]] = {"mrl": [], "d16": [], "d32": [], "d64": []}
    for seed in seeds:
        for name, dim, dims in (("mrl", 64, [16, 32]), ("d16", 16, []), ("d32", 32, []), ("d64", 64, [])):
            r = train(data, budget, seed, work / f"{name}_s{seed}", dim, dims)
            runs[name].append({"seed": seed, **r})
            for d, m in r["by_dim"].items():
                print(
                    f"seed {seed} {name:<4} at {d:>2} dims: valid ndcg@10 {m['valid']['filtered/ndcg@10']:.4f} | test "
                    f"hr@10 {m['test']['filtered/hr@10']:.4f} ndcg@10 {m['test']['filtered/ndcg@10']:.4f} "
                    f"r@100 {m['test']['filtered/hr@100']:.4f} ({r['examples_per_s']:,.0f} ex/s)",
                    flush=True,
                )
    table = {}
    for name, rs in runs.items():
        for d in rs[0]["by_dim"]:
            table[f"{name}@{d}"] = {
                f"{s}/{k}": mean_std([r["by_dim"][d][s][k] for r in rs]) for s in ("valid", "test") for k in KEYS
            }
    cost = statistics.mean(r["examples_per_s"] for r in runs["mrl"]) / statistics.mean(
        r["examples_per_s"] for r in runs["d64"]
    )
    return {"runs": runs, "table": table, "mrl_throughput_ratio": round(cost, 3)}


def mean_std(values: list[float]) -> list[float]:
    return [round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def matryoshka_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered unit vectors whose coordinate j has spread ~ 1 / sqrt(1 + j / 4): prefixes carry most of it."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(1.0 + np.arange(d) / 4.0)).astype(np.float32)
    centres = rng.normal(size=(1000, d)).astype(np.float32) * scale
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, 200_000):
        hi = min(n, lo + 200_000)
        x = centres[rng.integers(0, 1000, hi - lo)] + 0.6 * rng.normal(size=(hi - lo, d)).astype(np.float32) * scale
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def index_speed(n: int, queries: int = 300) -> dict:
    import faiss

    from twotower.index import IndexConfig
    from twotower.index.adaptive import build_index
    from twotower.index.vector_index import VectorIndex

    faiss.omp_set_num_threads(1)
    emb = matryoshka_vectors(n, 64, 0)
    ids = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(1)
    q = emb[rng.choice(n, queries, replace=False)] + 0.3 * rng.normal(size=(queries, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = VectorIndex.build(ids, emb, IndexConfig(backend="exact"))
    truth = exact.search(q, 100)[1]
    rows = {}
    setups = {
        "hnsw_full64": IndexConfig(backend="hnsw", hnsw_ef_search=256),
        "adaptive_p16_s4": IndexConfig(backend="hnsw", hnsw_ef_search=512, prefix_dim=16, shortlist=4),
        "adaptive_p32_s4": IndexConfig(backend="hnsw", hnsw_ef_search=512, prefix_dim=32, shortlist=4),
    }
    for name, config in setups.items():
        faiss.omp_set_num_threads(2)  # builds are offline work: every core
        t0 = time.perf_counter()
        index = build_index(ids, emb, config, "bench")
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        lat = []
        got = []
        for i in range(queries):
            t = time.perf_counter()
            got.append(index.search(q[i : i + 1], 100)[1][0])
            lat.append((time.perf_counter() - t) * 1e3)
        got = np.stack(got)
        rec100 = float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, truth)]))
        rec10 = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(got, truth)]))
        if hasattr(index, "memory_bytes"):
            size = index.memory_bytes()
        else:  # a plain index: its float32 rows and its FAISS structure
            size = int(index.vectors.nbytes + faiss.serialize_index(index._faiss_index).nbytes)
        rows[name] = {
            "build_s": round(build, 1),
            "recall@10": round(rec10, 4),
            "recall@100": round(rec100, 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "memory_bytes": size,
        }
        print(name, rows[name], flush=True)
        del index
    return {"items": n, "dim": 64, "queries": queries, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--budget", type=float, default=150.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--work")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "matryoshka.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="matryoshka_"))
    out: dict = {"benchmark": "matryoshka", "protocol": "strict", "seeds": args.seeds, "budget_s": args.budget}
    summary: dict = {}
    if not args.skip_quality:
        if not args.data:
            ap.error("--data PREPARED_ML1M is needed for the quality part (or --skip-quality)")
        q = quality(args.data, args.budget, args.seeds, work)
        out["quality"] = q
        for key, row in q["table"].items():
            summary[f"test_ndcg_at_10_{key.replace('@', '_at_')}"] = row["test/filtered/ndcg@10"][0]
            summary[f"test_recall_at_100_{key.replace('@', '_at_')}"] = row["test/filtered/hr@100"][0]
        summary["mrl_throughput_ratio"] = q["mrl_throughput_ratio"]
    if not args.skip_index:
        s = index_speed(args.items)
        out["index"] = s
        for name, row in s["rows"].items():
            summary[f"{name}_recall_at_100"] = row["recall@100"]
            summary[f"{name}_p50_ms"] = row["p50_ms"]
            summary[f"{name}_memory_bytes"] = row["memory_bytes"]
    out["summary"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("summary:", json.dumps(summary, indent=1), "->", args.out)


if __name__ == "__main__":
    main()
