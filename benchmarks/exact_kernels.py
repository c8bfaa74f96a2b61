"""Batched exact top-k on one thread: twotower's exact search against FAISS's own brute force, in one run.

Every path below answers the same question, the exact top-``k`` by inner product of ``B`` queries over
``N`` vectors, on ONE thread (FAISS, torch and BLAS all pinned to 1):

* ``blas_heaps``: twotower's exact backend, torch GEMM tiles of 2,048 rows into FAISS heaps (``blocked_topk``);
* ``flatip``: ``faiss.IndexFlatIP(D).search(Q, k)`` (FAISS: BLAS tiles of 4,096 x 1,024, then heaps);
* ``knn``: ``faiss.knn(Q, V, k, METRIC_INNER_PRODUCT)``, the same search without an index object.

Issue #14 item 7 used it to decide the hand-written AVX2 kernel ``index/_fused_topk.c`` (the top-k fused
into the GEMM's register blocks): ``results/exact_kernels.json`` holds that run, with the kernel as a fourth
path ``fused``. It gained 1.08x (N = 100k) and 1.01x (1M) over ``blas_heaps`` and was removed; both were
3.0-3.4x FAISS's ``IndexFlatIP``. The script still measures a ``fused`` path where a build of the kernel
provides ``exact.fused_topk`` (the commit before its removal).

Random unit vectors (a seeded Gaussian, normalised); each path runs once to warm up, then the paths take
turns, ``--repeats`` rounds of one call each, so a load that comes and goes falls on every path alike. Both
the median wall time and the median CPU time of the process are reported: on a machine shared with other
work the CPU time (one thread: the time this search actually ran) is the steadier figure, and the ratios in
``summary`` are CPU-time ratios from this one run (``*_wall`` keys: the same from wall time). The load
average at the start and end is recorded beside them. Usage::

    python benchmarks/exact_kernels.py [--sizes 100000 1000000] [--out benchmarks/results/exact_kernels.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch/faiss load their thread pools

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from twotower.index import exact  # noqa: E402

SEED = 0


def unit_vectors(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [n, d] Gaussian rows scaled to unit length."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def paths(k: int, index: faiss.IndexFlatIP) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Each batched exact top-k path as ``(queries [B, D], vectors [N, D]) -> labels int64 [B, k]``.

    ``index`` holds the same vectors, added before the clock starts: ``flatip`` times ``search`` alone.
    """
    out = {
        "flatip": lambda q, v: index.search(q, k)[1],
        "knn": lambda q, v: faiss.knn(q, v, k, metric=faiss.METRIC_INNER_PRODUCT)[1],
        "blas_heaps": lambda q, v: exact.blocked_topk(q, v, k)[1],
    }
    if hasattr(exact, "fused_topk") and exact.fused_available():  # the kernel's own tree only (see above)
        out["fused"] = lambda q, v: exact.fused_topk(q, v, k, threads=1)[1]
    return out


def timed_rounds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Name -> (median wall s, median CPU s) over ``repeats`` rounds in which every call runs once in turn."""
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in calls}


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of each row of ``a`` found in the same row of ``b`` (ties may swap the k-th item)."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def size_label(n: int) -> str:
    """1000000 -> '1m', 100000 -> '100k' (for summary keys)."""
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/exact_kernels.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    load_start = os.getloadavg()
    rng = np.random.default_rng(SEED)
    q = unit_vectors(args.batch, args.dim, rng)
    rows, summary = [], {}
    print(f"exact top-{args.k}, B={args.batch}, D={args.dim}, one thread; kernel here: {exact.kernel()}")
    print(f"{'N':>10} {'path':<11}{'wall s':>9}{'CPU s':>9}{'QPS(CPU)':>10}{'GFLOP/s':>9}{'overlap':>9}")
    for n in args.sizes:
        v = unit_vectors(n, args.dim, rng)
        index = faiss.IndexFlatIP(args.dim)
        index.add(v)
        todo = paths(args.k, index)
        found = {name: fn(q, v) for name, fn in todo.items()}  # also each path's warm-up call
        times = timed_rounds({name: (lambda fn=fn, v=v: fn(q, v)) for name, fn in todo.items()}, args.repeats)
        qps, qps_wall = {}, {}
        for name, (wall_s, cpu_s) in times.items():
            qps[name], qps_wall[name] = args.batch / cpu_s, args.batch / wall_s
            row = {
                "n": n,
                "path": name,
                "median_wall_s": wall_s,
                "median_cpu_s": cpu_s,
                "qps_cpu": qps[name],
                "qps_wall": qps_wall[name],
                "gflops_cpu": 2 * n * args.dim * args.batch / cpu_s / 1e9,
                "overlap_with_flatip": overlap(found[name], found["flatip"]),
            }
            rows.append(row)
            print(
                f"{n:>10,} {name:<11}{wall_s:>9.4f}{cpu_s:>9.4f}{row['qps_cpu']:>10.0f}{row['gflops_cpu']:>9.1f}"
                f"{row['overlap_with_flatip']:>9.4f}",
                flush=True,
            )
        label = size_label(n)
        pairs = [("blas_heaps", "flatip"), ("knn", "flatip")]
        if "fused" in qps:
            pairs += [("fused", "flatip"), ("fused", "knn"), ("fused", "blas_heaps")]
        for a, b in pairs:
            summary[f"{a}_over_{b}_{label}"] = qps[a] / qps[b]
            summary[f"{a}_over_{b}_{label}_wall"] = qps_wall[a] / qps_wall[b]
    for key, val in summary.items():
        print(f"{key:<37}{val:6.2f}x")
    doc = {
        "benchmark": "exact_kernels",
        "protocol": "n/a: speed only",
        "seeds": [SEED],
        "config": {"sizes": args.sizes, "dim": args.dim, "batch": args.batch, "k": args.k, "repeats": args.repeats},
        "threads": 1,
        "statistic": "medians of wall and process CPU time over rounds of one call per path, after a warm-up call;"
        " summary ratios are of CPU-time throughput (keys ending _wall: of wall-time throughput)",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": {"faiss": faiss.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "kernel": exact.kernel(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "conditions": "a machine shared with other jobs: compare the ratios (same run), not absolute times",
        "rows": rows,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
