"""The exact backend's batched top-k (BLAS tiles + FAISS heaps) against a plain numpy reference and against
FAISS's own brute force."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.index import IndexConfig
from twotower.index.exact import blocked_topk, kernel
from twotower.index.vector_index import VectorIndex


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(q, v, k, dead=None):
    s = q @ v.T
    if dead is not None:
        s[:, dead] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(s, order, 1)
    return top, np.where(np.isfinite(top), order, -1)


@pytest.mark.parametrize("n,block,k", [(1000, 128, 10), (1000, 4096, 50), (777, 100, 777), (50, 7, 80)])
def test_blocked_topk_equals_a_full_sort(n, block, k):
    rng = np.random.default_rng(n + block)
    q, v = unit(rng, 37, 16), unit(rng, n, 16)
    dead = rng.random(n) < 0.3
    for d in (None, dead):
        s, lab = blocked_topk(q, v, k, block, d)
        want_s, want_l = reference(q, v, min(k, n), d)
        np.testing.assert_allclose(s[np.isfinite(want_s)], want_s[np.isfinite(want_s)], rtol=0, atol=1e-5)
        assert ((lab < 0) == ~np.isfinite(want_s)).all()  # fewer live rows than k: padded with -1 / -inf
        # the returned rows' true scores are the top scores (float32 near-ties may swap two rows' order)
        true = np.where(lab >= 0, np.take_along_axis(q @ v.T, np.maximum(lab, 0), 1), -np.inf)
        np.testing.assert_allclose(np.sort(true, 1), np.sort(want_s, 1), rtol=0, atol=1e-5)
        assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in lab)  # no row twice
        if d is not None:
            assert not np.isin(lab[lab >= 0], np.flatnonzero(d)).any()


def test_blocked_topk_empty_inputs():
    rng = np.random.default_rng(0)
    s, lab = blocked_topk(unit(rng, 0, 8), unit(rng, 10, 8), 5)
    assert s.shape == lab.shape == (0, 5)
    s, lab = blocked_topk(unit(rng, 3, 8), unit(rng, 10, 8), 5, dead=np.ones(10, bool))
    assert (lab == -1).all() and np.isneginf(s).all()


def test_exact_index_batch_with_exclusions_and_allow_list_matches_reference():
    """More than 8 queries (the GEMM path), per-query exclusions, tombstones and an allow-list."""
    rng = np.random.default_rng(3)
    n, B, k = 5000, 40, 20
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    v, q = unit(rng, n, 32), unit(rng, B, 32)
    idx = VectorIndex.build(ids, v, IndexConfig(backend="exact", exact_block=512))
    gone = ids[rng.choice(n, 300, replace=False)]
    idx.delete(gone)
    exclude = [ids[rng.choice(n, int(rng.integers(0, 60)), replace=False)] for _ in range(B)]
    for allow in (None, ids[rng.choice(n, 100, replace=False)], ids[rng.choice(n, 4000, replace=False)]):
        got_s, got_i = idx.search(q, k, exclude=exclude, allow=allow)
        s = q @ v.T
        ok = ~np.isin(ids, gone) & (True if allow is None else np.isin(ids, allow))
        for b in range(B):
            m = ok & ~np.isin(ids, exclude[b])
            order = np.argsort(-s[b][m], kind="stable")[:k]
            np.testing.assert_allclose(got_s[b], s[b][m][order], atol=1e-5, rtol=0)
            assert set(got_i[b]) == set(ids[m][order])


def test_blocked_topk_equals_faiss_brute_force():
    """The same rows as ``faiss.IndexFlatIP`` (what benchmarks/exact_kernels.py measures it against)."""
    import faiss

    rng = np.random.default_rng(7)
    q, v = unit(rng, 64, 24), unit(rng, 5000, 24)
    index = faiss.IndexFlatIP(24)
    index.add(v)
    want_s, want_l = index.search(q, 50)
    s, lab = blocked_topk(q, v, 50)
    np.testing.assert_allclose(s, want_s, rtol=0, atol=1e-5)
    for a, b, sa in zip(lab, want_l, s):
        sure = sa > sa[-1] + 1e-5  # a tie at the 50th place may go either way
        assert set(a[sure]) == set(b[sure])


def test_the_default_install_has_one_exact_path():
    """No compiled kernel: every batch takes BLAS tiles + FAISS heaps (``scripts/setup.sh`` prints this)."""
    assert kernel() == "blas+faiss-heaps"
