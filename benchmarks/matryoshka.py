"""Matryoshka embeddings and adaptive retrieval: quality per prefix on ML-1M, speed and memory at 1M items.

**Quality** (protocol ``strict``, seen items removed, leave-last-out; valid and test printed, nothing chosen on
test). One after the other, each for ``--budget`` s of training with the no-config defaults (``auto_config``):

* ``mrl``: the 64-dim model with ``train.matryoshka_dims = [16, 32]`` (the same loss on each prefix, weight 1),
  scored at 16, 32 and 64 dims (``evaluate_model(dim=...)``: both towers' prefixes, unit again);
* ``d16`` / ``d32`` / ``d64``: models trained at that width alone (``model.dim``);

and the training cost of the extra loss terms (examples/s of ``mrl`` against ``d64``).

**Speed and memory at 1M items** (one search thread): the vectors of a Matryoshka model (64 dims, prefixes 16
and 32) trained on ``benchmarks/serve_load.py``'s clustered synthetic log of 1M items, through its real
candidate tower (that script's cached artifact root, ``--matryoshka 16 32``), queried with the model's real
user vectors (the export's user sample); exact full-width search is the oracle. Full-width HNSW (M = 32) at
several ``ef`` against adaptive indexes over the first 16 or 32 dims (HNSW, IVF-Flat, IVF-PQ codes without
float refine) whose ``shortlist x k`` candidates are re-scored with the float16 full vectors: build time,
bytes held, recall@10/@100, p50/p99 per query, queries/s. The verdict compares the fastest adaptive row at
recall@100 >= 0.95 with the fastest full-width row at least as accurate. ``--skip-quality`` /
``--skip-index`` keep that part of an existing ``--out`` file. Usage::

    python benchmarks/matryoshka.py --data PREPARED_ML1M [--budget 150] [--seeds 0 1 2] [--items 1000000]
        [--skip-quality | --skip-index] [--cache runs/bench_serve] [--out FILE]
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


def train(data, budget: float, seed: int, out: Path, dim: int, matryoshka: list[int], weights: list[float]) -> dict:
    from twotower.evaluate import evaluate_model

    overrides = {"matryoshka_dims": matryoshka, "matryoshka_weights": weights}
    summary, model, _, _, feat = train_auto(data, budget, seed, out, {"dim": dim}, overrides)
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


def variants(mrl_weights: list[float]) -> dict[str, tuple[int, list[int], list[float]]]:
    """name -> (model.dim, train.matryoshka_dims, train.matryoshka_weights)."""
    return {"mrl": (64, [16, 32], []), "d16": (16, [], []), "d32": (32, [], []), "d64": (64, [], []),
            "mrl_w": (64, [16, 32], list(mrl_weights))}  # fmt: skip


def quality(
    data_dir: str, budget: float, seeds: list[int], work: Path, names: list[str], weights: list[float], earlier: dict
) -> dict:
    """Train and score ``names`` for each seed; the runs of other variants are kept from ``earlier`` (an
    earlier result's ``quality``, same seeds and budget)."""
    from twotower.data import SequenceData

    data = SequenceData.load(data_dir)
    table_of = variants(weights)
    runs: dict[str, list[dict]] = {k: v for k, v in earlier.get("runs", {}).items() if k not in names}
    for seed in seeds:
        for name in names:
            dim, dims, w = table_of[name]
            r = train(data, budget, seed, work / f"{name}_s{seed}", dim, dims, w)
            runs.setdefault(name, []).append({"seed": seed, **r, **({"weights": w} if w else {})})
            for d, m in r["by_dim"].items():
                print(
                    f"seed {seed} {name:<5} at {d:>2} dims: valid ndcg@10 {m['valid']['filtered/ndcg@10']:.4f} | test "
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


# The adaptive index the 1M-item service publishes (benchmarks/serve_load.py --matryoshka 16 32 ...) and the rows
# it is compared with: (name, build config, search settings swept on the built index)
def setups():
    from twotower.index import IndexConfig

    hnsw = {"backend": "hnsw", "hnsw_m": 32, "hnsw_ef_construction": 200}
    return [
        ("hnsw_full64", IndexConfig(**hnsw), [{"hnsw_ef_search": ef} for ef in (64, 96, 128, 192, 256, 384, 512)]),
        ("adaptive_p16_hnsw", IndexConfig(**hnsw, prefix_dim=16), [{"shortlist": s} for s in (2, 4)]),
        ("adaptive_p16_ivf", IndexConfig(backend="ivfflat", prefix_dim=16),
         [{"ivf_nprobe": p, "shortlist": 4} for p in (8, 16, 32, 64)]),
        ("adaptive_p32_ivf", IndexConfig(backend="ivfflat", prefix_dim=32),
         [{"ivf_nprobe": p, "shortlist": 4} for p in (8, 16, 32)]),
        # PQ codes of the prefix (8 sub-quantisers of 2 dims, 8 bits: 8 bytes per item), no float refine: the
        # full float16 rows re-score the shortlist
        ("adaptive_p16_ivfpq", IndexConfig(backend="ivfpq", prefix_dim=16, pq_m=8, refine=False),
         [{"ivf_nprobe": p, "shortlist": s} for p in (16, 32, 64) for s in (4, 8)]),
        # the same with 1,024 lists (about one per cluster of this corpus): a cheaper coarse step, fewer lists
        ("adaptive_p16_ivfpq_nl1024", IndexConfig(backend="ivfpq", prefix_dim=16, pq_m=8, refine=False, ivf_nlist=1024),
         [{"ivf_nprobe": p, "shortlist": s} for p in (1, 2, 4) for s in (3, 4)]),
    ]  # fmt: skip


def trained_vectors(n: int, users: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """1M item vectors of a Matryoshka model (prefixes 16, 32; 64 dims) trained on the serving benchmark's
    clustered synthetic log, through its real candidate tower, and real user vectors of that model as
    queries: ``benchmarks/serve_load.py --matryoshka 16 32``'s cached artifact root."""
    from serve_load import build  # benchmarks/serve_load.py
    from twotower.index import IndexConfig
    from twotower.index.embeddings import load_embeddings

    # the root's own index does not matter here (serve_load publishes the one it serves): exact is cheap
    root = build(cache, n, users, matryoshka=(16, 32), index_cfg=IndexConfig(backend="exact"))
    emb_dir = next(d for d in (root / "embeddings").iterdir() if (d / "manifest.json").is_file())
    ids, emb, manifest = load_embeddings(emb_dir)
    queries = np.load(emb_dir / "users_sample.npy").astype(np.float32)
    return ids, emb, queries, manifest


PASSES = 3  # each setting searches every query this many times; the pass with the lowest mean is reported
BATCH = 32  # the service's largest micro-batch (serve/batcher.py): the batched rows search this many at once


def index_speed(n: int, users: int, cache: Path) -> dict:
    """Build each setup over the trained vectors (kept under ``cache/matryoshka-indexes``: a re-run loads them
    and reports the first build's time), then per search setting ``PASSES`` timed passes of one query at a
    time; the fastest pass gives p50/p99/QPS (timings on a shared machine drift between passes)."""
    import faiss

    from twotower.index import IndexConfig
    from twotower.index.adaptive import build_index, open_index
    from twotower.index.vector_index import VectorIndex

    ids, emb, q, manifest = trained_vectors(n, users, cache)
    faiss.omp_set_num_threads(1)
    exact = VectorIndex.build(ids, emb, IndexConfig(backend="exact"))
    truth = exact.search(q, 100)[1]
    del exact
    rows = {}
    for name, config, sweep in setups():
        saved = cache / "matryoshka-indexes" / f"{name}-{manifest.get('model_version')}"
        if (saved / "manifest.json").is_file():
            index = open_index(saved)
            build = float(json.loads((saved / "build.json").read_text())["build_s"])
        else:
            faiss.omp_set_num_threads(2)  # builds are offline work: every core
            t0 = time.perf_counter()
            index = build_index(ids, emb, config, "bench")
            build = time.perf_counter() - t0
            index.save(saved)
            (saved / "build.json").write_text(json.dumps({"build_s": build}))
            index = open_index(saved)  # as the service holds it: the float32 rows memory-mapped
        faiss.omp_set_num_threads(1)
        # what the service keeps in memory: FAISS's structure (+ an adaptive index's float16 rows); the float32
        # rows beside it are a memory map of the index file (read by exact completion scans only)
        size, mapped = index.memory_bytes(), getattr(index, "inner", index).vectors.nbytes
        for knobs in sweep:
            index.set_search_params(**knobs)
            index.search(q[:20], 100)  # warm the caches
            passes = []
            for _ in range(PASSES):
                lat, got = [], []
                for i in range(len(q)):
                    t = time.perf_counter()
                    got.append(index.search(q[i : i + 1], 100)[1][0])
                    lat.append((time.perf_counter() - t) * 1e3)
                passes.append(lat)
            lat = min(passes, key=np.mean)
            got = np.stack(got)
            # the service's shape under load: micro-batches of up to BATCH requests, one search call each
            batch_s = []
            for _ in range(PASSES):
                t = time.perf_counter()
                for lo in range(0, len(q), BATCH):
                    index.search(q[lo : lo + BATCH], 100)
                batch_s.append(time.perf_counter() - t)
            r10 = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(got, truth)])
            key = name + "".join(f"_{k.split('_')[-1]}{v}" for k, v in knobs.items())
            rows[key] = {
                "index": name,
                "search": knobs,
                "build_s": round(build, 1),
                "recall@10": round(float(r10), 4),
                "recall@100": round(float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, truth)])), 4),
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "qps_one_thread": round(1e3 / float(np.mean(lat)), 1),
                f"qps_batch{BATCH}_one_thread": round(len(q) / min(batch_s), 1),
                "memory_bytes": size,
                "mapped_float32_bytes": int(mapped),
            }  # fmt: skip
            print(key, rows[key], flush=True)
        del index
    return {"items": len(ids), "dim": int(emb.shape[1]), "queries": len(q), "model": manifest.get("model_version"),
            "vectors": "trained Matryoshka candidate tower (prefixes 16, 32) over the serve_load synthetic log",
            "rows": rows}  # fmt: skip


def verdict(rows: dict, qps: str = "qps_one_thread") -> dict:
    """The issue's check: the fastest adaptive row (by ``qps``) at recall@100 >= 0.95 against the fastest
    full-width HNSW row at recall@100 at least as high as that adaptive row's: queries/s and memory ratios."""
    ok = [r for r in rows.values() if r["index"].startswith("adaptive") and r["recall@100"] >= 0.95]
    if not ok:
        return {"adaptive_reaches_0_95": False}
    a = max(ok, key=lambda r: r[qps])
    full = [r for r in rows.values() if r["index"] == "hnsw_full64" and r["recall@100"] >= a["recall@100"]]
    if not full:  # no full-width row is as good: compare with its best
        full = [max((r for r in rows.values() if r["index"] == "hnsw_full64"), key=lambda r: r["recall@100"])]
    f = max(full, key=lambda r: r[qps])
    # the smallest adaptive index at recall@100 >= 0.95 (its fastest setting), against the same full-width row
    small = min(ok, key=lambda r: (r["memory_bytes"], -r[qps]))
    return {
        "adaptive_reaches_0_95": True,
        "qps": qps,
        "adaptive": a,
        "full_width": f,
        "qps_ratio": round(a[qps] / f[qps], 2),
        "memory_ratio": round(f["memory_bytes"] / a["memory_bytes"], 2),
        "smallest": small,
        "smallest_qps_ratio": round(small[qps] / f[qps], 2),
        "smallest_memory_ratio": round(f["memory_bytes"] / small["memory_bytes"], 2),
    }


def summarise(out: dict) -> dict:
    """The figures the issue checks: per-prefix test quality (means over seeds), the D/4 prefix's share of
    full-width Recall@100, the training cost of the prefix terms; the adaptive index against full-width HNSW."""
    summary: dict = {}
    if "quality" in out:
        q = out["quality"]
        for key, row in q["table"].items():
            summary[f"test_ndcg_at_10_{key.replace('@', '_at_')}"] = row["test/filtered/ndcg@10"][0]
            summary[f"test_recall_at_100_{key.replace('@', '_at_')}"] = row["test/filtered/hr@100"][0]
        r100 = {key: row["test/filtered/hr@100"][0] for key, row in q["table"].items()}
        for name in ("mrl", "mrl_w"):
            if f"{name}@64" in r100:
                d16, own, d64 = r100[f"{name}@16"], r100[f"{name}@64"], r100["d64@64"]
                summary[f"{name}_d16_share_of_own_full_recall_at_100"] = round(d16 / own, 4)
                summary[f"{name}_d16_share_of_d64_recall_at_100"] = round(d16 / d64, 4)
        summary["mrl_throughput_ratio"] = q["mrl_throughput_ratio"]
    if "index" in out:
        v = out["index"]["verdict"] = verdict(out["index"]["rows"])
        summary["adaptive_reaches_recall_0_95"] = v["adaptive_reaches_0_95"]
        if v["adaptive_reaches_0_95"]:
            for side in ("adaptive", "full_width"):
                r = v[side]
                summary[f"{side}_config"] = r["index"] + " " + json.dumps(r["search"])
                summary[f"{side}_recall_at_100"] = r["recall@100"]
                summary[f"{side}_p50_ms"] = r["p50_ms"]
                summary[f"{side}_qps"] = r["qps_one_thread"]
                summary[f"{side}_memory_bytes"] = r["memory_bytes"]
            summary["adaptive_qps_ratio"] = v["qps_ratio"]
            summary["adaptive_memory_ratio"] = v["memory_ratio"]
            r = v["smallest"]
            summary["smallest_adaptive_config"] = r["index"] + " " + json.dumps(r["search"])
            summary["smallest_adaptive_recall_at_100"] = r["recall@100"]
            summary["smallest_adaptive_qps"] = r["qps_one_thread"]
            summary["smallest_adaptive_memory_bytes"] = r["memory_bytes"]
            summary["smallest_adaptive_qps_ratio"] = v["smallest_qps_ratio"]
            summary["smallest_adaptive_memory_ratio"] = v["smallest_memory_ratio"]
        key = f"qps_batch{BATCH}_one_thread"
        if all(key in r for r in out["index"]["rows"].values()):  # rows measured before the batched passes lack it
            b = out["index"]["verdict_batched"] = verdict(out["index"]["rows"], key)
            if b["adaptive_reaches_0_95"]:
                for side in ("adaptive", "full_width"):
                    summary[f"batch{BATCH}_{side}_config"] = b[side]["index"] + " " + json.dumps(b[side]["search"])
                    summary[f"batch{BATCH}_{side}_recall_at_100"] = b[side]["recall@100"]
                    summary[f"batch{BATCH}_{side}_qps"] = b[side][key]
                summary[f"batch{BATCH}_adaptive_qps_ratio"] = b["qps_ratio"]
                summary[f"batch{BATCH}_adaptive_memory_ratio"] = b["memory_ratio"]
                summary[f"batch{BATCH}_smallest_adaptive_qps_ratio"] = b["smallest_qps_ratio"]
                summary[f"batch{BATCH}_smallest_adaptive_memory_ratio"] = b["smallest_memory_ratio"]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--budget", type=float, default=150.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--cache", default=str(REPO / "runs" / "bench_serve"), help="serve_load's artifact cache")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--variants", nargs="+", default=["mrl", "d16", "d32", "d64"],
                    help="models to train (mrl_w: the Matryoshka model with --mrl-weights); the others' runs "
                         "are kept from --out when its seeds are these")  # fmt: skip
    ap.add_argument("--mrl-weights", type=float, nargs=2, default=[0.25, 0.25], help="mrl_w's prefix weights")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--work")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "matryoshka.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="matryoshka_"))
    out: dict = {"benchmark": "matryoshka", "protocol": "strict", "seeds": args.seeds, "budget_s": args.budget}
    earlier = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if args.skip_quality and "quality" in earlier:  # a skipped part keeps the --out file's earlier result
        out.update(quality=earlier["quality"], seeds=earlier["seeds"], budget_s=earlier["budget_s"])
    elif not args.skip_quality:
        if not args.data:
            ap.error("--data PREPARED_ML1M is needed for the quality part (or --skip-quality)")
        keep = earlier.get("quality", {}) if earlier.get("seeds") == args.seeds else {}
        out["quality"] = quality(args.data, args.budget, args.seeds, work, args.variants, args.mrl_weights, keep)
    if args.skip_index and "index" in earlier and "verdict" in earlier["index"]:
        out["index"] = earlier["index"]
    elif not args.skip_index:
        out["index"] = index_speed(args.items, args.users, Path(args.cache))
    summary = summarise(out)
    out["summary"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("summary:", json.dumps(summary, indent=1), "->", args.out)


if __name__ == "__main__":
    main()
