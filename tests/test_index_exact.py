"""The exact backend's batched top-k against a plain numpy reference, on both of its kernels: BLAS tiles +
FAISS heaps, and the fused C kernel (``_fused_topk``), which must give the same results."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest

from twotower.index import IndexConfig
from twotower.index import exact as exact_mod
from twotower.index.exact import blocked_topk, fused_available, fused_topk
from twotower.index.vector_index import VectorIndex


def need_fused() -> None:
    """CI on x86-64 must have built the kernel (setup.py); elsewhere a missing compiler only skips it."""
    if fused_available():
        return
    if os.environ.get("CI") and platform.machine() in ("x86_64", "AMD64"):
        pytest.fail("the fused top-k kernel was not built: run `pip install -e .` with a C compiler on PATH")
    pytest.skip("fused top-k kernel not compiled on this machine")


@pytest.fixture(params=["blas", "fused"])
def kernel(request, monkeypatch):
    """Run the test on one kernel of blocked_topk: the BLAS path (extension hidden) or the fused one."""
    if request.param == "blas":
        monkeypatch.setattr(exact_mod, "_fused_topk", None)
    else:
        need_fused()
    return request.param


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
def test_blocked_topk_equals_a_full_sort(n, block, k, kernel):
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


def test_blocked_topk_empty_inputs(kernel):
    rng = np.random.default_rng(0)
    s, lab = blocked_topk(unit(rng, 0, 8), unit(rng, 10, 8), 5)
    assert s.shape == lab.shape == (0, 5)
    s, lab = blocked_topk(unit(rng, 3, 8), unit(rng, 10, 8), 5, dead=np.ones(10, bool))
    assert (lab == -1).all() and np.isneginf(s).all()


def test_exact_index_batch_with_exclusions_and_allow_list_matches_reference(kernel):
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


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("B,n,d", [(16, 1000, 64), (37, 5003, 64), (300, 4099, 24), (9, 10_000, 7)])
def test_fused_kernel_equals_the_blas_path(B, n, d, threads, monkeypatch):
    """Same scores and the same rows, ties included (duplicated vectors), for any batch, dimension (not a
    multiple of the register width), row count (not a multiple of the 6-row block) and thread split
    (by query panels, or by rows with a merge when panels are fewer than threads)."""
    need_fused()
    rng = np.random.default_rng(B + n + d)
    v = unit(rng, n, d)
    v[rng.choice(n, n // 10)] = v[rng.choice(n, n // 10)]  # exact duplicates: equal scores at the k-th place
    q = unit(rng, B, d)
    dead = rng.random(n) < 0.2
    for k in (1, 10, 100):
        for dd in (None, dead):
            s1, l1 = fused_topk(q, v, k, dd, threads=threads)
            with monkeypatch.context() as m:
                m.setattr(exact_mod, "_fused_topk", None)
                s0, l0 = blocked_topk(q, v, k, dead=dd)
            np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-5)
            # equal rows differ by rounding in the two GEMMs, so a tie at the k-th place may go either way;
            # every row scoring clearly above the k-th is in both
            for a, b, sa in zip(l1, l0, s1):
                sure = sa > sa[-1] + 1e-5
                assert set(a[sure]) == set(b[sure])
            true = np.where(l1 >= 0, np.take_along_axis(q @ v.T, np.maximum(l1, 0), 1), -np.inf)
            np.testing.assert_allclose(true, s0, rtol=0, atol=1e-5)  # what it returns scores what it says


def test_fused_kernel_serves_the_batches_of_the_exact_index(monkeypatch):
    """blocked_topk sends batches of FUSED_MIN_BATCH queries or more through the fused kernel."""
    need_fused()
    calls = []
    real = exact_mod.fused_topk
    monkeypatch.setattr(exact_mod, "fused_topk", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    rng = np.random.default_rng(0)
    v = unit(rng, 500, 16)
    blocked_topk(unit(rng, exact_mod.FUSED_MIN_BATCH - 1, 16), v, 5)
    assert not calls
    blocked_topk(unit(rng, exact_mod.FUSED_MIN_BATCH, 16), v, 5)
    assert calls == [1]
    assert exact_mod.kernel() == "fused-avx2"


def test_fused_kernel_rejects_buffers_of_the_wrong_size():
    """The C entry point checks every buffer against n, d, k and the panel range: a ValueError, not a crash."""
    need_fused()
    from twotower.index import _fused_topk

    v = np.zeros((10, 8), np.float32)
    panels = np.zeros((1, 8, 16), np.float32)

    def bufs(cap=8, slots=16):
        return [np.empty((slots, cap), np.float32), np.empty((slots, cap), np.int64), np.zeros(slots, np.int32),
                np.full(slots, -np.inf, np.float32)]  # fmt: skip

    _fused_topk.scan(v, 10, 8, panels, 0, 1, 5, *bufs())  # the right sizes pass
    with pytest.raises(ValueError, match="vectors"):
        _fused_topk.scan(v, 11, 8, panels, 0, 1, 5, *bufs())
    wrong = bufs()
    wrong[1] = wrong[1][:, :4].copy()
    with pytest.raises(ValueError, match="labels"):
        _fused_topk.scan(v, 10, 8, panels, 0, 1, 5, *wrong)
    with pytest.raises(ValueError, match="capacity"):
        _fused_topk.scan(v, 10, 8, panels, 0, 1, 8, *bufs())  # no room above k
    with pytest.raises(ValueError, match="dead"):
        _fused_topk.scan(v, 10, 8, panels, 0, 1, 5, *bufs(), np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="panel range"):
        _fused_topk.scan(v, 10, 8, panels, 0, 2, 5, *bufs())
    full = bufs()
    full[2][3] = 8
    with pytest.raises(ValueError, match="count"):
        _fused_topk.scan(v, 10, 8, panels, 0, 1, 5, *full)
    with pytest.raises(ValueError, match="vectors are"):
        fused_topk(np.zeros((16, 8), np.float32), np.zeros((10, 9), np.float32), 5)
