"""Feature store: the codec against a slow reference, then ONE behaviour suite run on SQLite and on a real Redis."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from redis_server import RedisServer

from twotower.errors import ConfigError, StoreConfigError, StoreError, StoreMissing, StoreUnavailable
from twotower.store import FeatureStore, StoreConfig, bytes_per_user, decode_states, encode_states, open_store
from twotower.store.codec import pack_records, record_bytes, unpack_records
from twotower.store.deferred import DeferredStore
from twotower.store.redis_store import RedisStore
from twotower.store.sqlite import SQLiteStore

T, D = 2, 16
SHAPE = (T, D)


def states(B: int, seed: int = 0, t: int = T, d: int = D) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(B, t, d)).astype(np.float32)
    x[:, :, 0] *= 5  # one large coordinate per token, as real activations have
    return x


def users(B: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}" for i in range(B)]


def put(store, ids, x, version, snap=1000, last=None):
    B = len(ids)
    snap = np.full(B, snap, np.int64)
    last = snap - 10 if last is None else np.full(B, last, np.int64)
    store.put_many(ids, x, snap, last, version)


# ---------------------------------------------------------------------------------------------- codec, pure


def int8_reference(x: np.ndarray) -> np.ndarray:
    """Slow, obvious symmetric per-token int8 quantise -> dequantise."""
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            scale = float(np.float32(np.abs(x[b, t]).max()) / np.float32(127))
            for d in range(x.shape[2]):
                q = 0 if scale == 0 else max(-127, min(127, round(float(x[b, t, d]) / scale)))
                out[b, t, d] = q * scale
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_codec_round_trip_within_bounds(dtype):
    x = states(7, seed=1)
    x[3, 1] = 0.0  # an all-zero token: scale 0 must not divide by zero
    blobs = encode_states(x, dtype)
    assert len(blobs) == 7 and all(len(b) == bytes_per_user(T, D, dtype) for b in blobs)
    y = decode_states(blobs, dtype, T, D)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert (y[3, 1] == 0).all()
    err = np.abs(y - x)
    if dtype == "float32":
        assert (y == x).all()
    elif dtype == "float16":
        assert (err <= np.abs(x) * 2.0**-11 + 1e-7).all() and err.max() > 0
    else:
        scale = np.abs(x).max(axis=2, keepdims=True) / 127
        assert (err <= scale / 2 + 1e-6 * scale).all() and err.max() > 0
        np.testing.assert_allclose(y, int8_reference(x), rtol=0, atol=1e-6)


def test_codec_sizes_and_bad_payloads():
    assert (bytes_per_user(1, 64, "float32"), bytes_per_user(1, 64, "float16"), bytes_per_user(1, 64, "int8")) == (
        256, 128, 68)  # fmt: skip
    assert bytes_per_user(8, 64, "int8") == 8 * 64 + 8 * 4
    assert record_bytes(1, 64, "float16", "m1") == 32 + 2 + 128
    with pytest.raises(ValueError, match=r"float32\|float16\|int8, got 'bfloat16'"):
        bytes_per_user(1, 4, "bfloat16")
    with pytest.raises(ValueError, match=r"has 31 bytes, expected 32 for \[1, 16\] float16"):
        decode_states([b"\0" * 31], "float16", 1, 16)


def test_records_refuse_other_versions_shapes_and_garbage():
    x = states(4)
    snap = np.array([10, 11, 12, 13])
    recs = pack_records(x, snap, snap - 1, "m1", "float16")
    other = pack_records(x, snap, snap - 1, "m2", "float16")  # same length version: only the bytes differ
    blobs = [recs[0], other[1], recs[2][:-1], None, b"junk", recs[3]]
    got = unpack_records(blobs, "m1", SHAPE)
    assert got.ok.tolist() == [True, False, False, False, False, True]
    assert got.skew.tolist() == [False, True, False, False, False, False]
    assert got.corrupt.tolist() == [False, False, True, False, True, False]
    assert (got.states[1:5] == 0).all() and got.snapshot_ts.tolist() == [10, -1, -1, -1, -1, 13]
    np.testing.assert_allclose(got.states[[0, 5]], x[[0, 3]], atol=1e-2)
    assert unpack_records(recs, "m1", (T, D + 1)).skew.all()  # another shape is skew, never reinterpreted


# ------------------------------------------------------------------------------------- one suite, two backends


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """``make_store(**config)`` -> a fresh store of the parametrised backend; every store shares one file/namespace."""
    namespace = f"t{uuid.uuid4().hex[:12]}"  # isolates tests on the shared Redis server
    opened = []

    def make(**cfg) -> FeatureStore:
        if request.param == "sqlite":
            store = open_store(f"sqlite:///{tmp_path}/states.db", StoreConfig(**cfg))
        else:
            url = request.getfixturevalue("redis_server").url
            store = open_store(url, StoreConfig(namespace=namespace, **cfg))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def plant(store, user_id: str, version: str, blob: bytes) -> None:
    """Overwrite the stored record bytes of ``(user_id, version)`` behind the store's back."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE states SET blob = ? WHERE user_id = ? AND model_version = ?", (blob, user_id, version))
    else:
        store.client.set(store._skey(version, user_id), blob)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_round_trip_per_dtype(make_store, dtype):
    store = make_store(dtype=dtype)
    x = states(5, seed=2)
    ids = users(5)
    store.put_many(ids, x, np.arange(5) + 100, np.array([90, 91, -1, 93, 94]), "m1")
    got = store.get_many(ids[::-1], "m1", SHAPE)  # request order, not write order
    assert got.found.all() and not got.mismatch.any()
    assert got.snapshot_ts.tolist() == [104, 103, 102, 101, 100]
    assert got.last_event_ts.tolist() == [94, 93, -1, 91, 90]
    expect = decode_states(encode_states(x, dtype), dtype, T, D)[::-1]
    assert (got.states == expect).all()  # exactly what the codec gives
    if dtype == "float32":
        assert (got.states == x[::-1]).all()
    assert store.stats["reads"] == 5 and store.stats["hits"] == 5 and store.stats["writes"] == 5


def test_missing_users_and_edge_requests(make_store):
    store = make_store()
    put(store, ["a", "b"], states(2), "m1")
    got = store.get_many(["a", "nobody", "a", "b"], "m1", SHAPE)  # duplicates are answered in place
    assert got.found.tolist() == [True, False, True, True] and not got.mismatch.any()
    assert (got.states[1] == 0).all() and got.snapshot_ts[1] == -1 and got.last_event_ts[1] == -1
    assert (got.states[0] == got.states[2]).all()
    empty = store.get_many([], "m1", SHAPE)
    assert empty.states.shape == (0, T, D) and empty.found.shape == (0,)
    assert store.stats["misses"] == 1 and store.stats["mismatches"] == 0


def test_version_skew_is_a_mismatch_never_other_numbers(make_store):
    store = make_store()
    xa, xb = states(3, seed=3), states(3, seed=4)
    put(store, users(3), xa, "modelA")
    got = store.get_many(users(4), "modelB", SHAPE)
    assert got.found.tolist() == [False] * 4
    assert got.mismatch.tolist() == [True, True, True, False]  # u3 has nothing at all: a plain miss
    assert (got.states == 0).all() and (got.snapshot_ts == -1).all()
    assert store.stats["mismatches"] == 3 and store.stats["misses"] == 4
    put(store, users(2), xb[:2], "modelB", snap=2000)  # the new model's refresh fills while A serves
    a, b = store.get_many(users(3), "modelA", SHAPE), store.get_many(users(3), "modelB", SHAPE)
    assert a.found.all() and (a.states == xa).all()
    assert b.found.tolist() == [True, True, False] and b.mismatch.tolist() == [False, False, True]
    assert (b.states[:2] == xb[:2]).all() and (b.states[2] == 0).all() and b.snapshot_ts.tolist() == [2000, 2000, -1]
    assert store.versions() == {"modelA": 3, "modelB": 2}
    assert (store.count("modelA"), store.count("modelB"), store.count("modelC")) == (3, 2, 0)
    other_shape = store.get_many(users(1), "modelA", (T, D * 2))  # same version, another [T, D]
    assert not other_shape.found[0] and other_shape.mismatch[0] and (other_shape.states == 0).all()


def test_record_header_version_is_checked(make_store):
    store = make_store()
    put(store, ["a", "b"], states(2), "m1")
    x = states(1, seed=9)
    plant(store, "a", "m1", pack_records(x, np.array([5]), np.array([1]), "m2", "float32")[0])  # a key bug
    plant(store, "b", "m1", b"TTS1 truncated")
    got = store.get_many(["a", "b"], "m1", SHAPE)
    assert got.found.tolist() == [False, False] and got.mismatch.tolist() == [True, False]
    assert (got.states == 0).all() and store.stats["corrupt"] == 1


def test_records_of_different_dtypes_read_together(make_store):
    x = states(2, seed=5)
    put(make_store(dtype="float32"), ["a"], x[:1], "m1")
    put(make_store(dtype="int8"), ["b"], x[1:], "m1")  # the config changed between two refresh runs
    got = make_store(dtype="float16").get_many(["b", "a"], "m1", SHAPE)
    assert got.found.all() and (got.states[1] == x[0]).all()
    assert np.abs(got.states[0] - x[1]).max() <= np.abs(x[1]).max() / 127


@pytest.mark.parametrize(
    "bad, message",
    [
        ("nan", "NaN or inf"),
        ("shape", r"states must be float \[B=4, T, D\]"),
        ("dup", "appears twice"),
        ("ts", "last_event_ts must be < snapshot_ts"),
        ("version", "model_version 'm:1'"),
        ("int", "floating point"),
    ],
)
def test_put_many_validates_the_whole_call_and_writes_nothing(make_store, bad, message):
    store = make_store(batch=2)  # several write batches: a bad last user must still stop the first batch
    ids, x = users(4), states(4)
    snap, last, version = np.full(4, 100), np.full(4, 50), "m1"
    if bad == "nan":
        x[3, 1, 2] = np.nan
    elif bad == "shape":
        x = x[:3]
    elif bad == "dup":
        ids[3] = ids[0]
    elif bad == "ts":
        last[3] = 100
    elif bad == "version":
        version = "m:1"
    elif bad == "int":
        x = x.astype(np.int64)
    with pytest.raises(ValueError, match=message):
        store.put_many(ids, x, snap, last, version)
    assert store.versions() == {} and store.count("m1") == 0
    assert not store.get_many(users(4), "m1", SHAPE).found.any()


def test_overwrite_get_meta_stale_and_delete(make_store):
    store = make_store()
    put(store, users(4), states(4, seed=6), "m1", snap=100, last=90)
    newer = states(2, seed=7)
    put(store, users(2), newer, "m1", snap=200, last=150)  # a later refresh replaces, never duplicates
    put(store, ["u0"], states(1, seed=8), "m2", snap=300, last=-1)
    got = store.get_many(users(2), "m1", SHAPE)
    assert (got.states == newer).all() and got.snapshot_ts.tolist() == [200, 200] and store.count("m1") == 4
    found, snap, last = store.get_meta(["u0", "u3", "nobody"], "m1")
    assert found.tolist() == [True, True, False] and snap.tolist() == [200, 100, -1] and last.tolist() == [150, 90, -1]
    found, snap, last = store.get_meta(["u0", "u1"], "m2")
    assert found.tolist() == [True, False] and snap.tolist() == [300, -1] and last.tolist() == [-1, -1]
    assert sorted(store.stale_users(150, "m1")) == ["u2", "u3"]
    assert store.stale_users(100, "m1") == [] and store.stale_users(10**9, "m2") == ["u0"]
    assert store.delete(["u0", "nobody"], "m1") == 1
    assert store.get_many(["u0"], "m2", SHAPE).found[0]  # the other version is untouched
    assert store.delete(["u0", "u1"]) == 2  # every version: u0@m2 and u1@m1
    assert store.versions() == {"m1": 2}
    got = store.get_many(["u0", "u2"], "m1", SHAPE)
    assert got.found.tolist() == [False, True] and not got.mismatch.any()


def test_has_states_per_version(make_store):
    store = make_store()
    assert not store.has_states("m1")
    put(store, users(3), states(3), "m1")
    assert store.has_states("m1") and not store.has_states("m2")
    store.delete(users(3), "m1")
    assert not store.has_states("m1")  # written once, all deleted: empty again


def test_large_requests_and_concurrent_readers(make_store):
    store = make_store(dtype="float16", batch=300)
    x = states(1200, seed=10)
    put(store, users(1200), x, "m1")  # several IN-chunks (SQLite) / transactions (Redis)
    ids = users(1300)
    expect = decode_states(encode_states(x, "float16"), "float16", T, D)

    def read(seed: int) -> bool:
        pick = np.random.default_rng(seed).choice(1300, 64, replace=False)
        got = store.get_many([ids[i] for i in pick], "m1", SHAPE)
        ok = pick < 1200
        return bool((got.found == ok).all() and (got.states[ok] == expect[pick[ok]]).all())

    assert store.get_many(ids, "m1", SHAPE).found.sum() == 1200
    with ThreadPoolExecutor(4) as pool:  # the service reads from a thread pool
        assert all(pool.map(read, range(24)))
    assert store.stats["reads"] == 1300 + 24 * 64


# ----------------------------------------------------------------------------------------------- open_store


def test_open_store_urls(tmp_path, monkeypatch, redis_server):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/dir/a.db") as s:
        assert isinstance(s, SQLiteStore) and s.path.resolve() == tmp_path / "rel/dir/a.db"
    with open_store(f"sqlite:///{tmp_path}/abs.db?dtype=int8&batch=7") as s:  # sqlite:////abs/path.db
        assert s.path == tmp_path / "abs.db" and s.config.dtype == "int8" and s.config.batch == 7
    for bare in ("b.sqlite", str(tmp_path / "c.db"), "d.sqlite3"):
        with open_store(bare) as s:
            assert isinstance(s, SQLiteStore) and s.path.exists()
    url = f"{redis_server.url}?namespace=prod&ttl=60&dtype=float16&timeout=0.5&batch=10"
    with open_store(url, StoreConfig(dtype="int8", namespace="x")) as s:
        assert isinstance(s, RedisStore)
        assert (s.config.namespace, s.config.ttl_s, s.config.dtype, s.config.timeout_s, s.config.batch) == (
            "prod", 60, "float16", 0.5, 10)  # fmt: skip
    with open_store("redis://:secret@127.0.0.1:1/0") as s:
        assert "secret" not in repr(s)


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgres://db/states", "accepted: sqlite:///"),
        ("states.parquet", "unknown form"),
        ("sqlite:///", "names no file"),
        ("sqlite:///a.db?colour=red", "unknown store URL parameter 'colour'"),
        ("sqlite:///a.db?dtype=bf16", r"dtype = 'bf16' is not allowed; use one of float32\|float16\|int8"),
        ("sqlite:///a.db?batch=many", "not a valid int"),
        ("sqlite:///a.db?ttl=5", "ttl_s=5 is Redis-only"),
        ("redis://127.0.0.1:1/0?namespace=a:b", "namespace = 'a:b' is not allowed; use 1-128 characters"),
    ],
)
def test_open_store_bad_urls(tmp_path, monkeypatch, url, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_store_config_errors_are_config_errors_naming_the_field():
    """StoreConfig checks like every config: ConfigError (a ValueError) with the field in .field."""
    for kwargs, field in (({"dtype": "bf16"}, "dtype"), ({"ttl_s": -1}, "ttl_s"), ({"timeout_s": 0}, "timeout_s"),
                          ({"batch": 0}, "batch"), ({"namespace": "a:b"}, "namespace")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"{field} = .* is not allowed") as e:
            StoreConfig(**kwargs)
        assert e.value.field == field


def test_missing_redis_client_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match="pip install redis"):
        open_store("redis://127.0.0.1:1/0")


def test_corrupt_or_foreign_sqlite_file(tmp_path):
    bad = tmp_path / "states.db"
    bad.write_bytes(b"this is not a database" * 300)
    with pytest.raises(StoreError, match=r"states\.db is not a readable SQLite feature store.*delete"):
        open_store(bad)
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE states (id INTEGER, payload TEXT)")
    with pytest.raises(StoreError, match="not a twotower feature store"):
        open_store(foreign)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        open_store(tmp_path / "dir.db")


def test_reader_never_creates_a_missing_sqlite_store(tmp_path):
    typo = tmp_path / "typo" / "stats.db"
    with pytest.raises(StoreMissing, match=r"typo/stats\.db does not exist.*twotower refresh-states"):
        open_store(f"sqlite:///{typo}", create=False)
    assert not typo.parent.exists()  # neither the file nor its directory
    with pytest.raises(StoreConfigError, match="unknown form"):  # a wrong URL is a config error too
        open_store("states.parquet", create=False)
    with open_store(tmp_path / "s.db") as writer:  # the writer side still creates
        put(writer, ["a"], states(1), "m1")
    with open_store(tmp_path / "s.db", create=False) as reader:
        assert reader.get_many(["a"], "m1", SHAPE).found.all()
    sqlite3.connect(tmp_path / "blank.db").close()  # an existing SQLite file without the table
    with pytest.raises(StoreError, match="no 'states' table"):
        open_store(tmp_path / "blank.db", create=False)


def hold_exclusive_lock(path) -> sqlite3.Connection:
    """Another writer holding the file (locking_mode=EXCLUSIVE + an open write transaction); close() releases."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE states SET snapshot_ts = snapshot_ts")
    return conn


def test_locked_store_fails_fast_for_readers_and_a_deferred_store_opens_later(tmp_path):
    path = tmp_path / "s.db"
    with open_store(path) as writer:
        put(writer, ["a"], states(1), "m1")
    lock = hold_exclusive_lock(path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="locked"):
            open_store(path, StoreConfig(timeout_s=0.1), create=False)
        assert time.perf_counter() - t0 < 2.0  # the reader waits timeout_s, not the writer's 5 s
        deferred = DeferredStore(lambda: open_store(path, StoreConfig(timeout_s=0.1), create=False), str(path))
        with pytest.raises(StoreUnavailable):
            deferred.get_many(["a"], "m1", SHAPE)
        assert not deferred.opened and "locked" in deferred.last_error and deferred.stats["errors"] == 1
    finally:
        lock.close()
    assert deferred.get_many(["a"], "m1", SHAPE).found.all() and deferred.opened and deferred.last_error is None
    assert deferred.has_states("m1") and deferred.stats["hits"] == 1
    deferred.close()
    with pytest.raises(StoreError, match="closed"):
        deferred.get_many(["a"], "m1", SHAPE)


# ---------------------------------------------------------------------------------------------- Redis faults


def test_redis_down_fails_fast_then_recovers(tmp_path):
    with RedisServer(dir=tmp_path) as server:
        store = open_store(server.url)
        put(store, ["a"], states(1), "m1")
        assert store.get_many(["a"], "m1", SHAPE).found[0]
        server.stop()
        for call in (lambda: store.get_many(["a"], "m1", SHAPE), lambda: put(store, ["a"], states(1), "m1")):
            t0 = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="is unavailable.*redis-server is running"):
                call()
            assert time.perf_counter() - t0 < 2.0
        assert store.stats["errors"] == 2
        server.start()  # same port, empty (no persistence): the pool reconnects by itself
        assert not store.get_many(["a"], "m1", SHAPE).found[0]
        put(store, ["a"], states(1), "m1")
        assert store.get_many(["a"], "m1", SHAPE).found[0]
        server.restart()  # pooled connections die with the old process; the next call must not fail
        assert store.count("m1") == 0
        store.close()


def test_redis_hung_times_out_then_recovers(tmp_path):
    with RedisServer(dir=tmp_path) as server:
        store = open_store(f"{server.url}?timeout=0.2")
        put(store, ["a"], states(1), "m1")
        server.pause()  # accepts connections, never answers
        try:
            t0 = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="TimeoutError"):
                store.get_many(["a"], "m1", SHAPE)
            assert time.perf_counter() - t0 < 1.0
        finally:
            server.resume()
        assert store.get_many(["a"], "m1", SHAPE).found[0]
        store.close()


def test_redis_ttl_expires_states_and_pointers(redis_server):
    with open_store(f"{redis_server.url}?ttl=1&namespace=ttl{uuid.uuid4().hex[:8]}") as store:
        put(store, ["a"], states(1), "m1")
        for key in (store._skey("m1", "a"), store._vkey("a")):
            assert 0 < store.client.pttl(key) <= 1000
        assert store.get_many(["a"], "m1", SHAPE).found[0]
        time.sleep(1.1)
        got = store.get_many(["a"], "m2", SHAPE)
        assert not got.found[0] and not got.mismatch[0]  # the pointer expired with the state
        assert store.count("m1") == 0


def test_redis_server_helper(tmp_path, monkeypatch):
    server = RedisServer(dir=tmp_path)
    assert not server.running
    with server:
        assert server.running and server.url == f"redis://127.0.0.1:{server.port}/0"
        pid = server.proc.pid
        server.restart()
        assert server.running and server.proc.pid != pid
    assert not server.running
    monkeypatch.setattr("redis_server.shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="bash scripts/setup.sh"):
        RedisServer(dir=tmp_path).start()


def test_thread_local_sqlite_connections_close(tmp_path):
    store = open_store(tmp_path / "s.db")
    put(store, ["a"], states(1), "m1")
    t = threading.Thread(target=lambda: store.get_many(["a"], "m1", SHAPE))
    t.start()
    t.join()
    assert len(store._conns) == 2
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_many(["a"], "m1", SHAPE)
