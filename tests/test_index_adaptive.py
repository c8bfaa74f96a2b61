"""Adaptive retrieval (prefix index + full-width re-scoring) against exact full-width search."""

import numpy as np
import pytest

from twotower.errors import IndexError_, VersionMismatch
from twotower.index.adaptive import AdaptiveIndex, build_index, open_index, prefix_of
from twotower.index.base import IndexConfig
from twotower.index.vector_index import VectorIndex

N, D, P = 3000, 32, 8


def matryoshka_like(n: int, seed: int) -> np.ndarray:
    """Unit vectors whose leading coordinates carry most of the variance (what the Matryoshka loss trains)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)) * (0.8 ** np.arange(D))[None, :]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # external ids that are not labels
    emb = matryoshka_like(N, 0)
    oracle = VectorIndex.build(ids, emb.astype(np.float16).astype(np.float32), IndexConfig(backend="exact"))
    return ids, emb, oracle, matryoshka_like(40, 1)


def test_a_whole_corpus_shortlist_is_exact_full_width_search_with_filters(corpus):
    ids, emb, oracle, q = corpus
    idx = AdaptiveIndex.build(ids, emb, P, IndexConfig(backend="exact"), "m1", shortlist=4)
    exclude = [ids[i : i + 30] for i in range(len(q))]
    allow = ids[::2]
    for kw in ({}, {"exclude": exclude}, {"allow": allow}, {"exclude": exclude, "allow": allow}):
        s, got = idx.search(q, 10, shortlist=N, **kw)
        s_ref, want = oracle.search(q, 10, **kw)
        assert np.array_equal(got, want), kw
        np.testing.assert_allclose(s, s_ref, atol=1e-5)


@pytest.mark.parametrize("backend", ["exact", "ivfflat"])
def test_one_query_at_a_time_equals_the_batch_and_leaves_the_query_alone(corpus, backend):
    """A single row's column slice counts as contiguous in numpy: normalising the prefix of a one-query batch
    must not write into the caller's query (it once did, and re-scored with the mutated vector)."""
    ids, emb, _, q = corpus
    idx = AdaptiveIndex.build(ids, emb, P, IndexConfig(backend=backend, ivf_nlist=16, ivf_nprobe=16), shortlist=4)
    before = q.copy()
    s_batch, got_batch = idx.search(q, 10)
    for i in range(len(q)):
        s, got = idx.search(q[i : i + 1], 10)
        np.testing.assert_array_equal(got[0], got_batch[i])
        np.testing.assert_allclose(s[0], s_batch[i], rtol=1e-6)
        np.testing.assert_allclose(s[0], np.sort(emb[(got[0] - 7) // 3].astype(np.float16) @ q[i])[::-1], rtol=1e-3)
    np.testing.assert_array_equal(q, before)
    one = q[0:1]
    prefix_of(one, P)
    np.testing.assert_array_equal(one, before[0:1])


def test_a_short_list_over_an_hnsw_prefix_keeps_most_of_the_recall(corpus):
    ids, emb, oracle, q = corpus
    idx = AdaptiveIndex.build(ids, emb, P, IndexConfig(backend="hnsw"), "m1", shortlist=4)
    _, got = idx.search(q, 10)
    _, want = oracle.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    _, plain = VectorIndex.build(ids, prefix_of(emb, P), IndexConfig(backend="exact")).search(prefix_of(q, P), 10)
    prefix_only = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(plain, want)])
    assert recall >= 0.9 and recall > prefix_only  # the re-scoring is what lifts it


def test_upsert_delete_save_load_and_refusals(corpus, tmp_path):
    ids, emb, _, q = corpus
    idx = AdaptiveIndex.build(ids[:500], emb[:500], P, IndexConfig(backend="exact"), "m1")
    idx.upsert(np.array([99999, int(ids[0])]), np.stack([q[0], q[1]]))  # a new id and a replaced one
    s, got = idx.search(q[:2], 1)
    assert got[:, 0].tolist() == [99999, int(ids[0])] and np.allclose(s[:, 0], 1.0, atol=1e-3)
    assert idx.delete(np.array([99999])) == 1 and idx.search(q[:1], 1)[1][0, 0] != 99999
    idx.save(tmp_path / "a", extra={"recall": {"recall@100": 1.0}})
    back = open_index(tmp_path / "a", expect_model_version="m1", expect_dim=D)
    assert isinstance(back, AdaptiveIndex) and back.prefix_dim == P and back.dim == D
    assert np.array_equal(back.search(q, 5)[1], idx.search(q, 5)[1])
    with pytest.raises(VersionMismatch, match="model version"):
        open_index(tmp_path / "a", expect_model_version="m2")
    with pytest.raises(VersionMismatch, match="64-dim"):
        open_index(tmp_path / "a", expect_dim=64)
    with pytest.raises(IndexError_, match="open_index"):
        VectorIndex.load(tmp_path / "a")  # a prefix index is never served as if it were full width
    with pytest.raises(ValueError, match=f"\\[B, {D}\\]"):
        idx.search(q[:, :P], 5)  # prefix-width queries: the index wants the full vector
    full = tmp_path / "a" / "full.npy"
    full.write_bytes(full.read_bytes()[:-64])
    with pytest.raises(IndexError_):
        open_index(tmp_path / "a")  # checksums first: a truncated file is refused
    with pytest.raises(ValueError, match="prefix_dim"):
        AdaptiveIndex.build(ids, emb, D, IndexConfig(backend="exact"))
    plain = build_index(ids[:50], emb[:50], IndexConfig(backend="exact"))
    assert isinstance(plain, VectorIndex) and plain.dim == D
    assert isinstance(build_index(ids[:50], emb[:50], IndexConfig(backend="exact", prefix_dim=P)), AdaptiveIndex)
