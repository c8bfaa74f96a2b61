"""Does OPQ help twotower's IVF-PQ? (issue 22: "IVF-PQ, and OPQ if it helps"). Recall@100 against exact of
IVF-PQ and of OPQ + IVF-PQ at the same code size, with and without twotower's exact re-scoring of the PQ
shortlist (refine factor x 100 candidates re-scored from the full vectors, as ``VectorIndex`` does).

Both are FAISS indexes built with ``faiss.index_factory`` (``IVF{L},PQ{M}`` and ``OPQ{M}_{D},IVF{L},PQ{M}``,
inner product) on the same synthetic clustered corpus as ``benchmarks/ann.py``; searches on one thread. Usage::

    python benchmarks/opq.py [--n 1000000] [--pq-m 16] [--out benchmarks/results/opq.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from ann import _queries, clustered  # noqa: E402  (benchmarks/ann.py: this directory is on sys.path)


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(g, t)) / len(t) for g, t in zip(got, truth)]))


def search(index, x: np.ndarray, q: np.ndarray, nprobe: int, refine: int) -> tuple[np.ndarray, float]:
    """Top 100 per query: the PQ order (refine 0) or the exact order over refine x 100 PQ candidates."""
    faiss.extract_index_ivf(index).nprobe = nprobe
    t0 = time.perf_counter()
    _, cand = index.search(q, 100 * max(refine, 1))
    if refine:
        scores = np.einsum("bfd,bd->bf", x[np.maximum(cand, 0)], q)
        scores[cand < 0] = -np.inf
        cand = np.take_along_axis(cand, np.argsort(-scores, axis=1)[:, :100], 1)
    return cand[:, :100], (time.perf_counter() - t0) / len(q) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pq-m", type=int, default=16)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/opq.json")
    args = ap.parse_args()
    x, q = clustered(args.n, args.dim, 1000, seed=0), _queries(args.queries, args.dim)
    _, truth = faiss.knn(q, x, 100, metric=faiss.METRIC_INNER_PRODUCT)
    lists = int(4 * np.sqrt(args.n))
    sample = x[np.random.default_rng(0).permutation(len(x))[: lists * 64]]
    rows = []
    ivfpq = f"IVF{lists},PQ{args.pq_m}"
    for name, spec in (("ivfpq", ivfpq), ("opq+ivfpq", f"OPQ{args.pq_m}_{args.dim},{ivfpq}")):
        t0 = time.perf_counter()
        index = faiss.index_factory(args.dim, spec, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(x)
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        for nprobe in (8, 16, 32):
            for refine in (0, 4, 8):
                got, ms = search(index, x, q, nprobe, refine)
                row = {"index": name, "nprobe": nprobe, "refine": refine, "recall_at_100": recall(got, truth),
                       "ms_per_query": ms, "build_s": build_s}  # fmt: skip
                rows.append(row)
                print(f"{name:<10} nprobe {nprobe:>3} refine {refine:>2}: recall@100 {row['recall_at_100']:.3f} "
                      f"{ms:.3f} ms/query (build {build_s:.0f} s)")  # fmt: skip
        faiss.omp_set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    gain = {
        f"recall_gain_nprobe{r['nprobe']}_refine{r['refine']}": r["recall_at_100"] - o["recall_at_100"]
        for r in rows if r["index"] == "opq+ivfpq"
        for o in rows if o["index"] == "ivfpq" and (o["nprobe"], o["refine"]) == (r["nprobe"], r["refine"])
    }  # fmt: skip
    doc = {"benchmark": "opq", "protocol": "n/a: recall against exact on synthetic vectors", "seeds": [0],
           "n": args.n, "dim": args.dim, "pq_m": args.pq_m, "lists": lists, "rows": rows, "summary": gain}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(gain, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
