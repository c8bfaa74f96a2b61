"""Exact top-k by inner product for a batch of queries: cache-sized GEMM tiles feeding per-query heaps.

For B queries over N vectors the work is one ``[B, D] x [D, N]`` product and a top-k per row. Two things
decide the speed on a CPU:

* the tile: ``Q @ V[lo:lo + block]ᵀ`` with a small ``block`` (2,048 rows) keeps the ``[B, block]`` score
  tile in cache, and the GEMM runs at ~80 GFLOP/s here (the core's FMA peak is ~103) against ~25 GFLOP/s
  for 262,144-row blocks, whose 256 MiB tile goes through memory;
* the top-k: each tile goes through FAISS's per-query min-heaps (``HeapArray.addn``), which compare every
  score with the heap's current k-th best and touch the heap only on a win. Once a few tiles are in, almost
  nothing wins, so the top-k costs about a compare per score, against a full ``torch.topk`` per tile.

Where the optional C extension ``_fused_topk`` is built and the CPU has AVX2 + FMA, batches of at least
``FUSED_MIN_BATCH`` queries take a third way, ``fused_topk``: the top-k check is fused into the GEMM's
register blocks, so a score never goes to memory unless it beats its query's k-th best. That skips the
write and the read-back of every score tile and runs the multiply-adds at ~94 % of the core's FMA peak
(BLAS: ~80 % on these thin ``D = 64`` products); the batched search is ~1.4x faster and returns the same
results (``tests/test_index_exact.py`` compares the two). ``kernel()`` names the path this machine runs.
Hand-written because no library offers it on CPU: FAISS's own CPU brute force is the BLAS + heaps path.

``benchmarks/ann.py`` reports the batched throughput beside the single-query one and beside the GEMM alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from . import _fused_topk
except ImportError:  # not compiled here (no C compiler at install time): the BLAS path serves every batch
    _fused_topk = None

DEFAULT_BLOCK = 2048
# From 2 queries on, one 16-query panel (mostly padding) already beats the BLAS tiles and FAISS's per-query
# scan; a single query is memory-bound and FAISS's scan reads the vectors fastest (benchmarks/ann.py).
FUSED_MIN_BATCH = 2
PANEL = 16  # queries per register block of the fused kernel (two 8-float AVX registers)


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # one long-lived pool (and its size) for the fused scans
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A shared pool of at least ``threads`` workers (grown, never shrunk): a new pool per search cost ~1 ms."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[1] < threads:
            old, _POOL = _POOL, (ThreadPoolExecutor(threads, thread_name_prefix="fused-topk"), threads)
            if old is not None:
                old[0].shutdown(wait=False)  # searches still running on it finish
        return _POOL[0]


def fused_available() -> bool:
    """True where the fused kernel is compiled and this CPU runs it (x86-64 with AVX2 and FMA)."""
    return _fused_topk is not None and _fused_topk.available()


def kernel() -> str:
    """The path a batched exact search takes on this machine: ``"fused-avx2"`` or ``"blas+faiss-heaps"``."""
    return "fused-avx2" if fused_available() else "blas+faiss-heaps"


def blocked_topk(
    queries: np.ndarray, vectors: np.ndarray, k: int, block: int = DEFAULT_BLOCK, dead: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``vectors`` [N, D] by inner product with each of ``queries`` [B, D].

    ``dead``: bool [N], rows never returned. Returns (scores float32 [B, k'], labels int64 [B, k']) best
    first, k' = min(k, N); a row with fewer than k' live candidates is padded with -inf / -1. Batches of
    ``FUSED_MIN_BATCH`` or more take the fused kernel where it runs, the rest :func:`blas_topk`.
    """
    if len(queries) >= FUSED_MIN_BATCH and fused_available():
        return fused_topk(queries, vectors, k, dead)
    return blas_topk(queries, vectors, k, block, dead)


def blas_topk(
    queries: np.ndarray, vectors: np.ndarray, k: int, block: int = DEFAULT_BLOCK, dead: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`blocked_topk` through torch GEMM tiles of ``block`` rows and FAISS's per-query heaps."""
    import faiss
    import torch  # here, not at the top: `twotower index list` and the CLI's help load this package

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    B, N = q.shape[0], v.shape[0]
    k = min(k, N)
    if B == 0 or k == 0:
        return np.zeros((B, k), np.float32), np.full((B, k), -1, np.int64)
    heaps = faiss.ResultHeap(B, k, keep_max=True)
    block = max(1, min(block, N))
    tile = torch.empty(B, block)
    dead_t = None if dead is None else torch.from_numpy(np.ascontiguousarray(dead, dtype=bool))
    for lo in range(0, N, block):
        hi = min(lo + block, N)
        out = tile[:, : hi - lo] if hi - lo == block else torch.empty(B, hi - lo)
        torch.mm(q, v[lo:hi].T, out=out)
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


def fused_topk(
    queries: np.ndarray, vectors: np.ndarray, k: int, dead: np.ndarray | None = None, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``blocked_topk`` through the fused kernel (needs ``fused_available()``); same arguments and results.

    ``threads`` (default: torch's intra-op thread count, or 1 for small work) split the work by query panels,
    or by rows with a merge of the per-thread candidates when there are fewer panels than threads.
    """
    if _fused_topk is None:
        raise RuntimeError("the fused top-k kernel is not compiled here; reinstall with a C compiler on PATH")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    (B, D), N = q.shape, len(v)
    if v.ndim != 2 or v.shape[1] != D:
        raise ValueError(f"queries are [B, {D}] but vectors are {list(v.shape)}")
    k = min(k, N)
    if B == 0 or k == 0:
        return np.zeros((B, k), np.float32), np.full((B, k), -1, np.int64)
    P = -(-B // PANEL)
    packed = np.zeros((P * PANEL, D), np.float32)
    packed[:B] = q
    packed = np.ascontiguousarray(packed.reshape(P, PANEL, D).transpose(0, 2, 1))  # [P, D, 16]
    dead_u8 = None if dead is None else np.ascontiguousarray(dead, dtype=bool).view(np.uint8)
    if dead_u8 is not None and len(dead_u8) != N:
        raise ValueError(f"dead has {len(dead_u8)} entries for {N} vectors")
    if threads is None:  # by default, threads only for work worth a pool
        import torch

        threads = torch.get_num_threads() if N * P >= 65536 else 1
    threads = max(1, threads)
    cap = k + min(max(k, 32), 1024)  # candidates kept per query between two cuts back to its k best

    def buffers() -> tuple[np.ndarray, ...]:
        slots = P * PANEL
        return (
            np.empty((slots, cap), np.float32),
            np.empty((slots, cap), np.int64),
            np.zeros(slots, np.int32),
            np.full(slots, -np.inf, np.float32),
        )

    def collect(buf: tuple[np.ndarray, ...], offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        vals, labs, counts = buf[0], buf[1], buf[2]
        unused = np.arange(cap)[None, :] >= counts[:, None]
        vals[unused], labs[unused] = -np.inf, -1
        if offset:
            labs[~unused] += offset
        return vals, labs

    if threads == 1:
        buf = buffers()
        _fused_topk.scan(v, N, D, packed, 0, P, k, *buf, dead_u8)
        hv, hl = collect(buf)
    elif P >= threads:  # disjoint panels per thread, each over every row
        buf = buffers()
        cuts = np.linspace(0, P, threads + 1).round().astype(int)
        list(_pool(threads).map(lambda t: _fused_topk.scan(v, N, D, packed, cuts[t], cuts[t + 1], k, *buf, dead_u8),
                                range(threads)))  # fmt: skip
        hv, hl = collect(buf)
    else:  # disjoint row ranges per thread, each with its own buffers; then the best k of theirs
        cuts = np.linspace(0, N, threads + 1).round().astype(np.int64)
        parts = [buffers() for _ in range(threads)]

        def run(t: int) -> None:
            lo, hi = cuts[t], cuts[t + 1]
            part_dead = None if dead_u8 is None else dead_u8[lo:hi]
            _fused_topk.scan(v[lo:hi], hi - lo, D, packed, 0, P, k, *parts[t], part_dead)

        list(_pool(threads).map(run, range(threads)))
        got = [collect(parts[t], int(cuts[t])) for t in range(threads)]
        hv, hl = np.concatenate([g[0] for g in got], 1), np.concatenate([g[1] for g in got], 1)
    hv, hl = hv[:B], hl[:B]
    order = np.argsort(-hv, axis=1, kind="stable")[:, :k]
    scores, labels = np.take_along_axis(hv, order, 1), np.take_along_axis(hl, order, 1)
    lost = labels < 0  # an empty heap slot (fewer than k live rows)
    scores[lost] = -np.inf
    return scores, labels
