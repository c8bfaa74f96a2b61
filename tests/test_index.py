import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import twotower
from twotower.errors import ConfigError, IndexError_, VersionMismatch
from twotower.index import IndexConfig, VectorIndex

BACKENDS = ["exact", "hnsw", "ivfflat", "ivfpq"]


def clustered(n, d=32, centres=40, seed=0, spread=0.35):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    x = clustered(6000)
    ids = np.arange(6000, dtype=np.int64) * 7 + 3  # external ids are not positions
    q = clustered(50, seed=1)
    return ids, x, q


def write_export(emb: Path, ids, x, q) -> Path:
    """An embeddings export directory as `twotower export` writes it (ids, vectors, a user sample)."""
    emb.mkdir()
    np.save(emb / "ids.npy", ids)
    np.save(emb / "embeddings.npy", x)
    np.save(emb / "users_sample.npy", q)
    manifest = {"model_version": "m" * 16, "dim": x.shape[1], "count": len(x), "dtype": "float32"}
    (emb / "manifest.json").write_text(json.dumps({**manifest, "created_at": "now", "normalized": True}))
    return emb


def cfg(backend):
    return IndexConfig(backend=backend, ivf_nlist=64, ivf_nprobe=16, pq_m=8, hnsw_ef_search=128)


def recall(a, b):
    return np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_recall_against_exact_and_save_load(corpus, backend, tmp_path):
    ids, x, q = corpus
    exact = VectorIndex.build(ids, x, cfg("exact"))
    _, truth = exact.search(q, 100)
    idx = VectorIndex.build(ids, x, cfg(backend), model_version="m1")
    s, got = idx.search(q, 100)
    assert recall(got, truth) >= 0.95
    assert (np.diff(s, axis=1) <= 1e-6).all()  # best first
    idx.save(tmp_path / "i")
    again = VectorIndex.load(tmp_path / "i", expect_model_version="m1")
    s2, got2 = again.search(q, 100)
    np.testing.assert_array_equal(got, got2)
    np.testing.assert_allclose(s, s2)
    # one copy in memory: beside a FAISS structure the float32 rows are a read-only map of the file, and the
    # exact scans that complete a filtered search read them there (a small allow-list is searched exactly)
    assert isinstance(again.vectors, np.memmap) == (backend != "exact")
    allow = ids[::97]
    want = exact.search(q, 10, allow=allow)[1]
    np.testing.assert_array_equal(again.search(q, 10, allow=allow)[1], want)
    np.testing.assert_array_equal(again.search(q[:3], 10, allow=allow)[1], want[:3])  # the few-query scan
    again.upsert(ids[:5], x[5:10])  # mutation copies what it changes; the file stays as saved
    assert not isinstance(again.vectors, np.memmap)
    np.testing.assert_array_equal(again.vectors[again.labels_of(ids[:5])], x[5:10])
    np.testing.assert_array_equal(np.load(tmp_path / "i" / "vectors.npy"), x)


def test_exact_equals_brute_force(corpus):
    ids, x, q = corpus
    s, got = VectorIndex.build(ids, x, IndexConfig(backend="exact", exact_block=1000)).search(q, 10)
    full = q @ x.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got, ids[want])
    np.testing.assert_allclose(s, np.take_along_axis(full, want, 1), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inner_product_not_l2(backend):
    """With vectors of unequal length, inner-product and L2 rankings differ; every backend must rank by IP."""
    rng = np.random.default_rng(0)
    x = clustered(3000, d=16, centres=10, seed=2) * rng.uniform(0.3, 3.0, (3000, 1)).astype(np.float32)
    q = clustered(20, d=16, centres=10, seed=3)
    ip_truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    l2_truth = np.argsort(((q[:, None, :] - x[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert recall(ip_truth, l2_truth) < 0.5  # the two metrics really disagree on this data
    idx = VectorIndex.build(np.arange(3000), x, IndexConfig(backend=backend, ivf_nlist=16, ivf_nprobe=16, pq_m=4))
    _, got = idx.search(q, 10)
    assert recall(got, ip_truth) >= 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_filters_return_k_valid_results(corpus, backend):
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, cfg(backend))
    _, top = idx.search(q[:3], 50)
    exclude = [top[0][:40], top[1][:10], np.array([], np.int64)]
    _, got = idx.search(q[:3], 20, exclude=exclude)
    for row, ex in zip(got, exclude):
        assert len(set(row) & set(ex)) == 0 and (row >= 0).all() and len(set(row)) == 20
    _, one = idx.search(q[:1], 20, exclude=top[0][:40])  # single query: selector inside the search
    assert len(set(one[0]) & set(top[0][:40])) == 0 and (one[0] >= 0).all()
    allow = ids[::97]  # a 1 % allow-list: fewer than k exist for nothing, k valid results
    _, got = idx.search(q[:2], 30, allow=allow)
    assert set(got.ravel()) <= set(allow) and (got >= 0).all()
    allow = ids[::3]
    _, got = idx.search(q[:2], 30, allow=allow, exclude=[top[0][:5], top[1][:5]])
    assert set(got.ravel()) <= set(allow) and (got >= 0).all()
    s, got = idx.search(q[:1], 10, allow=ids[:4])  # only 4 exist: 4 results, then padding
    assert sorted(got[0][:4]) == sorted(ids[:4]) and (got[0][4:] == -1).all() and np.isneginf(s[0][4:]).all()


def test_probed_lists_too_small_for_k_are_completed_exactly(corpus):
    """nprobe=1 of 64 lists holds ~94 items: a k=200 search cannot fill from them, so those rows are answered
    by exact search (and counted), never returned short."""
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, IndexConfig(backend="ivfflat", ivf_nlist=64, ivf_nprobe=1))
    exact = VectorIndex.build(ids, x, IndexConfig(backend="exact"))
    s, got = idx.search(q[:5], 200)
    es, want = exact.search(q[:5], 200)
    assert idx.completed_exactly == 5
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(s, es, rtol=1e-5, atol=1e-6)
    idx.set_search_params(ivf_nprobe=64)  # every list: nothing to complete
    idx.search(q[:5], 200)
    assert idx.completed_exactly == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_upsert_and_delete_visible_in_next_search(corpus, backend):
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, cfg(backend))
    _, top = idx.search(q[:1], 5)
    assert idx.delete(top[0][:2]) == 2
    _, after = idx.search(q[:1], 5)
    assert not set(top[0][:2]) & set(after[0])
    new_id = np.array([10**9])
    idx.upsert(new_id, q[:1])  # a new item equal to the query: must come first
    s, got = idx.search(q[:1], 3)
    assert got[0][0] == 10**9 and abs(s[0][0] - 1.0) < 1e-3
    moved = after[0][:1]
    idx.upsert(moved, -q[:1])  # move an item to the opposite direction: gone from the top
    _, got = idx.search(q[:1], 50)
    assert moved[0] not in got[0]
    assert len(idx) == len(ids) - 2 + 1


def test_version_mismatch_and_corrupt_files(corpus, tmp_path):
    ids, x, _ = corpus
    VectorIndex.build(ids, x, cfg("hnsw"), model_version="A").save(tmp_path / "i")
    with pytest.raises(VersionMismatch, match="model version A.*version B"):
        VectorIndex.load(tmp_path / "i", expect_model_version="B")
    VectorIndex.load(tmp_path / "i", expect_model_version="B", allow_version_mismatch=True)
    f = tmp_path / "i" / "faiss.index"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(IndexError_, match="corrupt or truncated"):
        VectorIndex.load(tmp_path / "i")
    f.unlink()
    with pytest.raises(IndexError_, match="missing"):
        VectorIndex.load(tmp_path / "i")
    with pytest.raises(IndexError_, match="not an index"):
        VectorIndex.load(tmp_path / "nothing")


def test_bad_queries_are_clear_errors(corpus):
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, cfg("exact"))
    with pytest.raises(ValueError, match=r"shape \[B, 32\]"):
        idx.search(np.zeros((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="NaN"):
        idx.search(np.full((1, 32), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        idx.search(q[:1], 0)


def test_exact_scan_of_few_queries_equals_the_blocked_matmul_path():
    """Few queries take FAISS's scan, many the blocked GEMM: same results under tombstones and filters."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 7 + 1
    idx = VectorIndex.build(ids, x, IndexConfig(backend="exact", exact_block=1024))
    idx.delete(ids[rng.choice(3000, 40, replace=False)])
    q = rng.normal(size=(12, 16)).astype(np.float32)
    exclude = [ids[rng.choice(3000, 25, replace=False)] for _ in range(12)]
    allow = ids[rng.choice(3000, 2600, replace=False)]  # few enough filtered out for the scan path
    for kw in ({}, {"exclude": exclude}, {"allow": allow}, {"exclude": exclude, "allow": allow}):
        few = idx.search(q[:4], 50, **{k: (v[:4] if k == "exclude" else v) for k, v in kw.items()})
        many = idx.search(q, 50, **kw)  # 12 queries: the GEMM path
        assert np.array_equal(few[1], many[1][:4]), kw
        assert np.allclose(few[0], many[0][:4], atol=1e-5)


@pytest.mark.parametrize("backend", ["exact", "hnsw", "ivfpq"])
def test_search_labels_are_the_rows_search_answers_with_ids(corpus, backend):
    """search_labels (what an adaptive index re-scores from) answers with rows of the index: mapped through
    ``ids`` they are search's answer, filters, tombstones and padding included."""
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, cfg(backend))
    idx.delete(ids[:50])
    exclude = [ids[100:110], ids[200:205]]
    for kw in ({}, {"exclude": exclude}, {"allow": ids[40:90]}):
        s1, got = idx.search(q[:2], 20, **kw)
        s2, labels = idx.search_labels(q[:2], 20, **kw)
        assert np.array_equal(s1, s2)
        assert np.array_equal(np.where(labels >= 0, idx.ids[np.maximum(labels, 0)], -1), got)
        ok = labels >= 0
        assert idx.alive[labels[ok]].all()
        np.testing.assert_allclose((x[labels[ok]] * np.repeat(q[:2], ok.sum(1), 0)).sum(1), s2[ok], atol=1e-5)
    assert (idx.search_labels(q[:2], 50, allow=ids[40:90])[1] == -1).sum() == 2 * (50 - 40)  # 40 allowed alive


def test_search_params_take_search_knobs_only(corpus, tmp_path):
    """Search knobs change results in place (and are saved); build-time fields and bad values are refused
    before anything changes, so the manifest never describes an index that was not built."""
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, IndexConfig(backend="ivfflat", ivf_nlist=64, ivf_nprobe=1))
    exact = VectorIndex.build(ids, x, IndexConfig(backend="exact"))
    _, want = exact.search(q[:20], 10)
    _, narrow = idx.search(q[:20], 10)
    idx.set_search_params(ivf_nprobe=64)
    _, wide = idx.search(q[:20], 10)
    assert (wide == want).mean() == 1.0 > (narrow == want).mean()
    idx.set_search_params(ivf_nprobe=1)  # the kept FAISS parameters follow the knob, one query at a time too
    assert (idx.search(q[:20], 10)[1] == narrow).all()
    assert (np.concatenate([idx.search(q[i : i + 1], 10)[1] for i in range(20)]) == narrow).all()
    idx.set_search_params(ivf_nprobe=64)
    for bad in ({"ivf_nlist": 8}, {"backend": "exact"}, {"ivf_nprobe": 0}, {"ivf_nprobe": 2.5},
                {"hnsw_ef_search": True}, {"filter_exact_below": 2.0}, {"no_such_knob": 1},
                {"ivf_nprobe": 2, "refine_factor": 0}):  # fmt: skip
        with pytest.raises(ValueError, match="search-time|positive integer|fraction"):
            idx.set_search_params(**bad)
    assert idx.config.ivf_nlist == 64 and idx.config.ivf_nprobe == 64 and idx.config.backend == "ivfflat"
    idx.save(tmp_path / "i")
    assert VectorIndex.load(tmp_path / "i").config.ivf_nprobe == 64


def test_ivfpq_on_a_corpus_too_small_for_its_codebooks_warns_with_the_fix(corpus, caplog):
    """6,000 vectors cannot train 256 centroids per sub-quantiser well (k-means wants 39 x 256 = 9,984): the
    build says so in our words and names what fits; pq_bits=6 (2,496 wanted) builds quietly."""
    ids, x, _ = corpus
    with caplog.at_level("WARNING", logger="twotower.index.faiss_backend"):
        VectorIndex.build(ids, x, IndexConfig(backend="ivfpq", ivf_nlist=64, pq_m=8, pq_bits=8))
    msgs = [r.getMessage() for r in caplog.records if r.name == "twotower.index.faiss_backend"]
    assert len(msgs) == 1 and "at least 9984" in msgs[0] and "pq_bits=7" in msgs[0] and "ivfflat or hnsw" in msgs[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="twotower.index.faiss_backend"):
        VectorIndex.build(ids, x, IndexConfig(backend="ivfpq", ivf_nlist=64, pq_m=8, pq_bits=6))
    assert not [r for r in caplog.records if r.name == "twotower.index.faiss_backend"]


@pytest.mark.parametrize("backend", ["hnsw", "ivfflat"])
def test_one_query_keeps_its_exclusions_through_the_exact_completion(corpus, backend):
    """A single query's exclusions go into FAISS as a selector; when the filtered ANN search runs dry and the
    row is completed by exact search, the completion must exclude them too (it once did not)."""
    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, IndexConfig(backend=backend, ivf_nlist=64, ivf_nprobe=2, hnsw_ef_search=16))
    exact = VectorIndex.build(ids, x, IndexConfig(backend="exact"))
    _, near = exact.search(q[:1], 400)
    excluded = near[0][:300]  # its 300 nearest: the graph / the probed lists have little left
    allow = ids[::2]  # and an allow-list
    for rows in (q[:1], q[:2]):  # one query (selector) and two (post-filter): the same rule
        idx.completed_exactly = 0
        _, got = idx.search(rows, 100, exclude=[excluded] * len(rows), allow=allow)
        assert idx.completed_exactly > 0  # the completion path ran
        assert not np.isin(got, excluded).any()
        assert np.isin(got[got >= 0], allow).all() and ((got >= 0).sum(1) == 100).all()


@pytest.mark.parametrize(
    "knob,value",
    [("hnsw_m", -1), ("hnsw_m", 0), ("pq_bits", 0), ("pq_bits", 40), ("ivf_nprobe", 0), ("refine_factor", 0),
     ("ivf_nlist", -4), ("hnsw_ef_search", 0), ("pq_m", 0), ("hnsw_m", 2.5), ("filter_exact_below", 1.5)],
)  # fmt: skip
def test_index_config_refuses_knobs_faiss_would_crash_on(knob, value):
    """hnsw_m = -1 made FAISS ask for all memory, hnsw_m = 0 / pq_bits = 0 crashed it: refused up front."""
    with pytest.raises(ValueError, match=knob):
        IndexConfig(backend="hnsw", **{knob: value})


def test_vectors_with_nan_are_refused_naming_their_ids(corpus):
    """A NaN vector made HNSW searches spin forever; build and upsert refuse it and name the id."""
    ids, x, _ = corpus
    bad = x[:200].copy()
    bad[5, 3] = np.nan
    for backend in ("exact", "hnsw"):
        with pytest.raises(ValueError, match=rf"ids \[{ids[5]}\]"):
            VectorIndex.build(ids[:200], bad, IndexConfig(backend=backend))
    idx = VectorIndex.build(ids[:200], x[:200], IndexConfig(backend="exact"))
    with pytest.raises(ValueError, match="NaN"):
        idx.upsert(np.array([1, 2]), np.full((2, x.shape[1]), np.inf, np.float32))
    with pytest.raises(ValueError, match="unique"):
        idx.upsert(np.array([1, 1]), x[:2])
    assert len(idx) == 200  # nothing changed


def test_publish_refuses_an_ann_that_exact_search_had_to_complete(tmp_path, corpus):
    """1 probe of many tiny lists returns a handful of items per query; the exact completion would report
    recall 1.0 for an index that does not work, so the build is refused on the completed fraction."""
    from twotower.errors import RecallTooLow
    from twotower.index.publish import build_and_publish, history

    ids, x, q = corpus
    emb = write_export(tmp_path / "emb", ids, x, q)
    bad = IndexConfig(backend="ivfflat", ivf_nlist=1000, ivf_nprobe=1)
    with pytest.raises(RecallTooLow, match="exact scan"):
        build_and_publish(emb, tmp_path / "root", bad, recall_floor=0.5)
    assert history(tmp_path / "root") == []
    good = build_and_publish(emb, tmp_path / "root", IndexConfig(backend="ivfflat", ivf_nlist=64, ivf_nprobe=16))
    assert good["recall"]["completed_exactly"] == 0.0 and good["recall"]["recall@100"] >= 0.95


def test_rollback_takes_published_names_only_and_a_corrupt_history_is_a_clear_error(tmp_path, corpus):
    from twotower.index.publish import history, rollback

    root = tmp_path / "root"
    (root / "versions").mkdir(parents=True)
    (root / "history.json").write_text('["v1", "v2"]')
    (root / "CURRENT").write_text("v2\n")
    with pytest.raises(IndexError_, match="not a version published"):
        rollback(root, to="../../elsewhere/versions/v9")
    assert (root / "CURRENT").read_text() == "v2\n"
    (root / "history.json").write_text('["v1", "v2"')  # truncated
    with pytest.raises(IndexError_, match="unreadable"):
        history(root)
    for bad in ('["v1", "../x"]', "5", "true", '{"v": 1}'):
        (root / "history.json").write_text(bad)
        with pytest.raises(IndexError_, match="not a list of version names"):
            history(root)
    (root / "history.json").write_text("[]")
    assert history(root) == []


def test_index_config_errors_are_config_errors_naming_the_field():
    """One check path for every config: the CLI reads .field instead of matching the message."""
    with pytest.raises(ConfigError, match=r"hnsw_m = 0 is not allowed; it must be an integer in \[2, 512\]") as e:
        IndexConfig(hnsw_m=0)
    assert e.value.field == "hnsw_m"
    with pytest.raises(ConfigError, match=r"backend = 'annoy' is not allowed; use one of exact, hnsw") as e:
        IndexConfig(backend="annoy")
    assert e.value.field == "backend"
    with pytest.raises(ConfigError, match=r"filter_exact_below = True is not allowed") as e:
        IndexConfig(filter_exact_below=True)
    assert e.value.field == "filter_exact_below"


DEAD_PID = 4_194_305  # above Linux's largest pid_max: never a live process


def test_index_build_removes_what_killed_builds_left_and_nothing_else(tmp_path, corpus, caplog):
    """A killed build left versions/.<v>.tmp-<pid> for good (issue 17): the next build removes the
    temporaries of dead processes, keeps a live build's and anything holding other files."""
    from twotower.index.publish import build_and_publish

    ids, x, q = corpus
    emb = write_export(tmp_path / "emb", ids[:2000], x[:2000], q)
    root = tmp_path / "root"
    versions = root / "versions"
    versions.mkdir(parents=True)
    dead = versions / f".20260101T000000-mmmmmmmm-exact.tmp-{DEAD_PID}"  # the name today's code leaves
    dead.mkdir()
    (dead / "ids.npy").write_bytes(b"half")
    dead_aside = versions / f".20260101T000001-mmmmmmmm-exact.old-{DEAD_PID - 1}-k2j4_x"
    dead_aside.mkdir()
    foreign = versions / f".notes.tmp-{DEAD_PID}"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not ours")
    pointer = root / f".CURRENT.tmp-{DEAD_PID}"
    pointer.write_text("v0\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        live = versions / f".20260101T000002-mmmmmmmm-exact.tmp-{sleeper.pid}-a1b2c3"  # a build still running
        live.mkdir()
        (live / "ids.npy").write_bytes(b"being written")
        with caplog.at_level("WARNING"):
            res = build_and_publish(emb, root, IndexConfig(backend="exact"))
        assert not dead.exists() and not dead_aside.exists() and not pointer.exists()
        assert live.exists() and (foreign / "thesis.tex").exists()
        assert sorted(p.name for p in versions.iterdir()) == sorted([res["version"], live.name, foreign.name])
        assert f"removing {dead}, the new index version of an earlier index build that was killed" in caplog.text
        assert f"leaving {foreign} alone" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()


# Loaded at start-up by the `index build` subprocess below: SIGKILL the process right after the first array
# of the new index version is written into its temporary directory, i.e. in the middle of the build's save.
KILL_IN_SAVE = """
import os, signal
import numpy as np

_save = np.save


def _save_then_die(file, *args, **kwargs):
    _save(file, *args, **kwargs)
    if ".tmp-" in str(file):
        os.kill(os.getpid(), signal.SIGKILL)


np.save = _save_then_die
"""


def test_sigkilled_index_build_leaves_nothing_after_the_rerun(tmp_path, corpus):
    """A real `twotower index build` process SIGKILLed mid-save; the re-run publishes and leaves no leftover."""
    from twotower.index.publish import build_and_publish, current_path, history

    ids, x, q = corpus
    emb = write_export(tmp_path / "emb", ids[:2000], x[:2000], q)
    root = tmp_path / "root"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_IN_SAVE)
    src = str(Path(twotower.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), src, os.environ.get("PYTHONPATH", "")])}
    argv = ["index", "build", "--emb", str(emb), "--out", str(root), "--backend", "exact"]
    proc = subprocess.run([sys.executable, "-m", "twotower.cli", *argv], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    left = [p.name for p in (root / "versions").iterdir()]
    assert left and all(".tmp-" in n or ".old-" in n for n in left)  # killed inside the save: temporaries only
    assert history(root) == [] and not (root / "CURRENT").exists()
    res = build_and_publish(emb, root, IndexConfig(backend="exact"))
    assert [p.name for p in (root / "versions").iterdir()] == [res["version"]]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert history(root) == [res["version"]] and len(VectorIndex.load(current_path(root))) == 2000


@pytest.mark.parametrize("spacing", [1, 7])  # dense ids (a direct table) and sparse ones (a binary search)
def test_labels_of_dense_and_sparse_ids_agree_with_a_dict(spacing):
    rng = np.random.default_rng(0)
    x = clustered(500, d=8)
    ids = rng.permutation(500).astype(np.int64) * spacing + 3
    idx = VectorIndex.build(ids, x, IndexConfig(backend="exact"))
    idx.delete(ids[:50])
    idx.upsert(ids[:10], x[:10])  # back, under new labels
    idx.upsert(np.array([ids.max() + 1, ids.max() + 2 * spacing]), x[:2])  # beyond the old range
    assert idx._lookup is None  # built lazily, on the first lookup after a change
    alive = {int(i): lab for lab, i in enumerate(idx.ids) if idx.alive[lab]}
    probe = np.concatenate([idx.ids, [-5, -1, 0, 1, 2, ids.max() + 10**6]]).reshape(-1, 2)  # any shape
    want = np.vectorize(lambda i: alive.get(int(i), -1))(probe)
    np.testing.assert_array_equal(idx.labels_of(probe), want)
    assert len(idx._lookup) == (1 if spacing == 1 else 2)


def test_ivfpq_rescoring_from_the_rows_equals_faiss_refine_flat(corpus, tmp_path):
    """IVF-PQ's exact re-scoring reads the index's own rows (a memory map once loaded) instead of FAISS's
    IndexRefineFlat, which would hold a second float32 copy: same PQ shortlist, same exact scores, same top k."""
    import faiss

    ids, x, q = corpus
    idx = VectorIndex.build(ids, x, cfg("ivfpq"))
    idx.save(tmp_path / "i")
    idx = VectorIndex.load(tmp_path / "i")
    base = faiss.clone_index(idx._faiss_index)
    ref = faiss.IndexRefineFlat(base, faiss.swig_ptr(x))  # the reference: FAISS's own refine, its own copy of x
    params = faiss.IndexRefineSearchParameters(k_factor=4.0, base_index_params=faiss.SearchParametersIVF(nprobe=16))
    want_s, want_l = ref.search(q, 100, params=params)
    got_s, got = idx.search(q, 100)
    assert idx.memory_bytes() < x.nbytes / 2  # FAISS holds the codes; the rows are the memory map
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    same = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, ids[want_l])])
    assert same >= 0.999  # identical up to the order of exact ties
    # an index saved with the refine wrapper (the earlier format) loads as the IVF-PQ alone, same answers
    faiss.write_index(ref, str(tmp_path / "old.index"))
    from twotower.index import faiss_backend

    old = faiss_backend.read(str(tmp_path / "old.index"))
    assert isinstance(old, faiss.IndexIVFPQ) and old.ntotal == len(x)
    np.testing.assert_array_equal(old.search(q, 10)[1], idx._faiss_index.search(q, 10)[1])


@pytest.mark.parametrize("backend", ["exact", "ivfpq"])
def test_float16_rows_score_like_exact_search_over_the_rounded_vectors(corpus, backend, tmp_path):
    ids, x, q = corpus
    rounded = VectorIndex.build(ids, x.astype(np.float16).astype(np.float32), IndexConfig(backend="exact"))
    idx = VectorIndex.build(ids, x, dataclasses.replace(cfg(backend), rows_dtype="float16"))
    assert idx.vectors.dtype == np.float16
    idx.save(tmp_path / "i")
    assert np.load(tmp_path / "i" / "vectors.npy").dtype == np.float16
    again = VectorIndex.load(tmp_path / "i")
    assert again.vectors.dtype == np.float16 and isinstance(again.vectors, np.memmap) == (backend != "exact")
    _, truth = rounded.search(q, 100)
    s, got = again.search(q, 100)
    assert recall(got, truth) >= (0.999 if backend == "exact" else 0.95)
    allow = ids[::97]  # a small allow-list: the exact scan over the float16 rows (few and many queries)
    want = rounded.search(q, 10, allow=allow)
    for sub in (slice(0, 3), slice(None)):
        s_got, got = again.search(q[sub], 10, allow=allow)
        np.testing.assert_allclose(s_got, want[0][sub], atol=1e-5)
        assert recall(got, want[1][sub]) >= 0.999
    again.upsert(ids[:5], x[5:10])  # upserted rows are kept as float16 too
    assert again.vectors.dtype == np.float16
    np.testing.assert_array_equal(again.vectors[again.labels_of(ids[:5])], x[5:10].astype(np.float16))


def test_rows_of_another_dtype_than_the_manifest_are_refused(corpus, tmp_path):
    ids, x, _ = corpus
    VectorIndex.build(ids[:500], x[:500], cfg("hnsw")).save(tmp_path / "i")
    np.save(tmp_path / "i" / "vectors.npy", x[:500].astype(np.float16))
    from twotower.index.base import read_manifest, write_manifest

    manifest = read_manifest(tmp_path / "i", verify=False)
    write_manifest(tmp_path / "i", {k: v for k, v in manifest.items() if k != "files"}, list(manifest["files"]))
    with pytest.raises(IndexError_, match="rows are float16.*rebuild"):
        VectorIndex.load(tmp_path / "i")
    with pytest.raises(ConfigError, match="rows_dtype"):
        IndexConfig(rows_dtype="int8")


def _rss_file_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_scan_over_a_memory_mapped_export_keeps_one_slice_resident(tmp_path):
    """release_rows drops what a scan has read from the process's resident set; the values stay readable."""
    from twotower.index.embeddings import release_rows

    x = clustered(300_000, d=64)  # 73 MiB
    np.save(tmp_path / "x.npy", x)
    view = np.asarray(np.load(tmp_path / "x.npy", mmap_mode="r"))  # a plain view of the map, as build sees it
    base = _rss_file_mib()
    assert float(view[:, 0].sum()) == pytest.approx(float(x[:, 0].sum()), rel=1e-5)  # touches every page
    assert _rss_file_mib() - base > 50
    for lo in range(0, len(view), 50_000):
        release_rows(view, lo, lo + 50_000)
    assert _rss_file_mib() - base < 5
    np.testing.assert_array_equal(view, x)
    release_rows(x, 0, 10)  # not a memory map: nothing happens
    private = np.load(tmp_path / "x.npy", mmap_mode="c")  # a writeable copy-on-write map keeps its changes
    private[0, 0] = 7.0
    release_rows(private)
    assert private[0, 0] == 7.0


def test_an_index_built_from_a_memory_mapped_export_equals_one_built_in_memory(corpus, tmp_path):
    from twotower.index.embeddings import load_embeddings

    ids, x, q = corpus
    emb = write_export(tmp_path / "emb", ids, x, q)
    _, mapped, _ = load_embeddings(emb)
    config = dataclasses.replace(cfg("ivfpq"), rows_dtype="float16")
    a, b = VectorIndex.build(ids, mapped, config), VectorIndex.build(ids, x, config)
    for one, two in zip(a.search(q, 100), b.search(q, 100)):
        np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(a.vectors, b.vectors)
