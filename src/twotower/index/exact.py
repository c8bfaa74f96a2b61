"""Exact top-k by inner product for a batch of queries: cache-sized GEMM tiles feeding per-query heaps.

For B queries over N vectors the work is one ``[B, D] x [D, N]`` product and a top-k per row. Two things
decide the speed on a CPU:

* the tile: ``Q @ V[lo:lo + block]ᵀ`` with a small ``block`` (2,048 rows) keeps the ``[B, block]`` score
  tile in cache, and the GEMM runs at ~80 GFLOP/s here (the core's FMA peak is ~103) against ~25 GFLOP/s
  for 262,144-row blocks, whose 256 MiB tile goes through memory;
* the top-k: each tile goes through FAISS's per-query min-heaps (``HeapArray.addn``), which compare every
  score with the heap's current k-th best and touch the heap only on a win. Once a few tiles are in, almost
  nothing wins, so the top-k costs about a compare per score, against a full ``torch.topk`` per tile.

FAISS's own batched brute force (``IndexFlatIP.search``, ``faiss.knn``) has the same shape but takes ~3x
the time here (``benchmarks/exact_kernels.py``: B = 256, D = 64, k = 100, one thread; this path has 3.0x its
throughput at N = 100k, 3.4x at 1M); this scan also masks dead rows (tombstones, allow-lists) per tile,
where FAISS would need an ID selector. A hand-written AVX2 kernel that fused the top-k into the GEMM's
register blocks gained 1.08x / 1.01x over this path in the same run and was removed (issue #14): the
default install builds no C.
"""

from __future__ import annotations

import warnings

import numpy as np

from .embeddings import in_slices

DEFAULT_BLOCK = 2048


def kernel() -> str:
    """The path a batched exact search takes (``scripts/setup.sh`` prints it): BLAS tiles + FAISS heaps."""
    return "blas+faiss-heaps"


def rescore(queries: np.ndarray, rows: np.ndarray, labels: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-scoring of a shortlist: inner products of ``queries`` [B, D] with ``rows[labels]`` (labels int64
    [B, F], -1 = no candidate; rows float32 or float16 [N, D], only the shortlist's are read). Returns the best
    ``keep`` per query as (scores float32 [B, keep'], their labels int64 [B, keep']), best first (ties in
    shortlist order), keep' = min(keep, F); -inf / -1 where the row had fewer candidates.

    The gather and the float16 -> float32 widening go through torch: numpy widens float16 one element at a
    time (~2 ns each: 54 us of a 400 x 64 shortlist), torch with the CPU's conversion instructions (6 us)."""
    import torch

    B, F = labels.shape
    ok = labels >= 0
    padded = not ok.all()
    picks = np.where(ok, labels, 0) if padded else labels
    picked = _as_tensor(rows).index_select(0, torch.from_numpy(np.ascontiguousarray(picks, np.int64).reshape(-1)))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    scores = torch.bmm(picked.view(B, F, -1).float(), q.view(B, -1, 1)).view(B, F).numpy()  # [B, F]
    if padded:
        scores[~ok] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
    rows_b = np.arange(B)[:, None]
    top = scores[rows_b, order]
    return top, np.where(np.isfinite(top), labels[rows_b, order], -1)


def _as_tensor(rows: np.ndarray):
    """``rows`` as a torch tensor sharing its memory (a read-only memory map too: it is only read)."""
    import torch

    rows = np.asarray(rows)
    if rows.flags.writeable:
        return torch.from_numpy(rows)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(rows)


def blocked_topk(
    queries: np.ndarray, vectors: np.ndarray, k: int, block: int = DEFAULT_BLOCK, dead: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``vectors`` [N, D] (float32, or float16 widened per tile) by inner product
    with each of ``queries`` [B, D].

    ``dead``: bool [N], rows never returned. Returns (scores float32 [B, k'], labels int64 [B, k']) best
    first, k' = min(k, N); a row with fewer than k' live candidates is padded with -inf / -1.
    """
    import faiss
    import torch  # here, not at the top: `twotower index list` and the CLI's help load this package

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    half = np.asarray(vectors).dtype == np.float16  # an index's float16 rows: converted one tile at a time
    with warnings.catch_warnings():  # a served index's vectors are a read-only memory map; only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float16 if half else np.float32))
    B, N = q.shape[0], v.shape[0]
    k = min(k, N)
    if B == 0 or k == 0:
        return np.zeros((B, k), np.float32), np.full((B, k), -1, np.int64)
    heaps = faiss.ResultHeap(B, k, keep_max=True)
    block = max(1, min(block, N))
    tile = torch.empty(B, block)
    dead_t = None if dead is None else torch.from_numpy(np.ascontiguousarray(dead, dtype=bool))
    for lo, hi in in_slices(vectors, block):  # memory-mapped rows: one tile resident at a time
        out = tile[:, : hi - lo] if hi - lo == block else torch.empty(B, hi - lo)
        torch.mm(q, v[lo:hi].float().T if half else v[lo:hi].T, out=out)
        if dead_t is not None:
            d = dead_t[lo:hi]
            if bool(d.any()):
                out.masked_fill_(d[None, :], float("-inf"))
        heaps.heaps.addn(hi - lo, faiss.swig_ptr(out.numpy()), lo, 0, B)
    heaps.finalize()
    scores, labels = heaps.D, heaps.I
    lost = (labels < 0) | ~np.isfinite(scores)  # an empty heap slot (fewer than k live rows)
    labels[lost] = -1
    scores[lost] = -np.inf
    return scores, labels
