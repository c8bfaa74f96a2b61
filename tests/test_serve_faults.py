"""Faults: the feature store going away and coming back (a real redis-server), and a graceful SIGTERM drain."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis_server import RedisServer, free_port
from test_serve_support import TOKEN, settings, shared_artifacts, wait_ready

from twotower.data import SequenceData
from twotower.errors import ArtifactError, StoreMissing, StoreUnavailable
from twotower.jobs.refresh import refresh_states
from twotower.serve import service as service_module
from twotower.serve.app import create_app
from twotower.serve.engine import Retriever
from twotower.serve.health import check_serving_store
from twotower.serve.metrics import Metrics
from twotower.store import open_store


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def store_errors(c: TestClient) -> float:
    return float(re.search(r"^twotower_store_errors_total (\S+)$", c.get("/metrics").text, re.M).group(1))


def test_redis_down_serves_fallback_and_recovers(art):
    model_dir = next((art.root / "models").iterdir())
    with RedisServer() as server:
        refresh_states(model_dir, server.url, as_of=art.as_of, progress=False)
        with TestClient(create_app(settings(art.root, store_url=server.url, store_retry_s=0.3))) as c:
            users = list(SequenceData.load(art.data).user_ids().astype(str)[:40])
            paths = [c.post("/v1/retrieve", json={"user_id": u, "k": 3}).json()["path"] for u in users]
            assert "cached" in paths
            cached = users[paths.index("cached")]
            server.stop()
            t0 = time.perf_counter()
            r = c.post("/v1/retrieve", json={"user_id": cached, "k": 3})
            assert r.status_code == 200 and r.json()["path"] == "fallback" and len(r.json()["items"]) == 3
            assert time.perf_counter() - t0 < 2.0  # a refused connection fails fast, no hang
            assert store_errors(c) >= 1 and c.get("/readyz").json()["store"] == "unavailable"
            # while the store is skipped (retry window) requests do not pay its timeout again
            assert c.post("/v1/retrieve", json={"user_id": cached, "k": 3}).json()["path"] == "fallback"
            server.start()  # same port; persistence is off, so the refresh job writes the states again
            refresh_states(model_dir, server.url, as_of=art.as_of, progress=False)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if c.post("/v1/retrieve", json={"user_id": cached, "k": 3}).json()["path"] == "cached":
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the service did not go back to the cached path after Redis returned")
            assert c.get("/readyz").json()["store"] == "ok"
            # a hung server (SIGSTOP): the lookup times out (~0.25 s) and the request is still answered
            server.pause()
            try:
                time.sleep(0.35)  # let the retry window pass
                t0 = time.perf_counter()
                r = c.post("/v1/retrieve", json={"user_id": cached, "k": 3})
                assert r.json()["path"] == "fallback" and time.perf_counter() - t0 < 2.0
            finally:
                server.resume()


def cached_user(art) -> str:
    """A user the shared artifact root's store holds a state for."""
    model_version = next((art.root / "models").iterdir()).name
    with open_store(art.root / "states.db", create=False) as st:
        return next(u for u in SequenceData.load(art.data).user_ids().astype(str)
                    if st.get_meta([u], model_version)[0][0])  # fmt: skip


def test_missing_sqlite_store_stops_the_start_and_creates_nothing(art, tmp_path):
    typo = tmp_path / "typo" / "stats.db"
    with pytest.raises(StoreMissing, match=r"typo/stats\.db does not exist.*twotower refresh-states"):
        with TestClient(create_app(settings(art.root, store_url=f"sqlite:///{typo}"))):
            pass
    assert not typo.parent.exists()  # no new empty store that would serve every user cold-start
    with pytest.raises(StoreMissing, match="does not exist"):  # the same check, for the CLI before any worker starts
        check_serving_store(f"sqlite:///{typo}")
    (tmp_path / "corrupt.db").write_bytes(b"not a database" * 500)
    check_serving_store(str(tmp_path / "corrupt.db"))  # exists: the service starts on the fallback path
    assert not typo.parent.exists()


def test_store_without_states_of_the_served_model_is_reported(art, tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/other.db"
    with open_store(url) as st:  # a store, but filled for another model version only
        st.put_many(["u"], np.ones((1, 1, 16), np.float32), np.array([10]), np.array([5]), "other-version")
    cfg = settings(art.root, store_url=url, store_retry_s=0.2)
    with caplog.at_level(logging.WARNING), TestClient(create_app(cfg)) as c:
        bundle = c.app.state.service.retriever.bundle
        assert c.get("/readyz").json()["store"] == f"empty for model {bundle.model_version}"
        assert f"holds no state for model {bundle.model_version}" in caplog.text and "refresh-states" in caplog.text
        assert c.post("/v1/retrieve", json={"user_id": "u", "k": 3}).json()["path"] == "fallback"
        with open_store(url) as st:  # the refresh job fills it while the service runs
            st.put_many(["u"], np.ones((1, *bundle.state_shape), np.float32), np.array([10]), np.array([5]),
                        bundle.model_version)  # fmt: skip
        deadline = time.monotonic() + 5  # /readyz sees it without a request, at the next probe (store_retry_s)
        while c.get("/readyz").json()["store"] != "ok":
            assert time.monotonic() < deadline, "/readyz did not see the filled store"
            time.sleep(0.05)
        assert c.post("/v1/retrieve", json={"user_id": "u", "k": 3}).json()["path"] == "cached"


def test_readyz_reports_a_store_that_lost_its_states(art, caplog):
    """Issue 17.3: Redis restarted without its data while the service ran. /readyz kept "ok" (the status was
    probed again only at start-up, on reload or when already not "ok"), the "holds no state" warning never fired,
    and every user silently went cold-start. It must report the empty store within the retry window."""
    model_dir = next((art.root / "models").iterdir())
    with RedisServer() as server:
        refresh_states(model_dir, server.url, as_of=art.as_of, progress=False)
        cfg = settings(art.root, store_url=server.url, store_retry_s=0.2)
        with caplog.at_level(logging.WARNING), TestClient(create_app(cfg)) as c:
            version = c.app.state.service.retriever.bundle.model_version
            assert c.get("/readyz").json()["store"] == "ok"
            server.stop()
            server.start()  # same port; persistence is off, so it comes back empty
            t0 = time.monotonic()
            while (store := c.get("/readyz").json()["store"]) != f"empty for model {version}":
                assert time.monotonic() - t0 < 5, f"/readyz still says {store!r} over an empty store"
                time.sleep(0.05)
            assert f"holds no state for model {version}" in caplog.text
            refresh_states(model_dir, server.url, as_of=art.as_of, progress=False)  # refilled: "ok" again
            t0 = time.monotonic()
            while c.get("/readyz").json()["store"] != "ok":
                assert time.monotonic() - t0 < 5, "/readyz did not see the refilled store"
                time.sleep(0.05)


class ProbedStore:
    """A store that counts existence probes; down (``fail``) or up, with or without states (``has``)."""

    def __init__(self) -> None:
        self.probes, self.fail, self.has = 0, True, False

    def has_states(self, model_version: str) -> bool:
        self.probes += 1
        if self.fail:
            raise StoreUnavailable("down")
        return self.has

    def get_many(self, user_ids, model_version, shape):
        raise StoreUnavailable("down")

    def close(self) -> None:
        pass


def test_store_probe_keeps_to_the_retry_window():
    """/readyz calls check_store on every poll while the store is not "ok"; between retries it must cost
    nothing (no Redis SCAN, no open attempt on a locked SQLite file)."""
    store, window = ProbedStore(), 0.3
    r = Retriever(SimpleNamespace(model_version="v1", state_shape=(1, 4)), store, Metrics(), retry_s=window)
    assert r.check_store() == "unavailable" and store.probes == 1
    assert all(r.check_store() == "unavailable" for _ in range(20)) and store.probes == 1
    time.sleep(window)
    store.fail = False
    assert r.check_store() == "empty for model v1" and store.probes == 2
    assert all(r.check_store() == "empty for model v1" for _ in range(20)) and store.probes == 2
    r.swap(SimpleNamespace(model_version="v2", state_shape=(1, 4)))  # a reload probes the new version at once
    assert r.check_store() == "empty for model v2" and store.probes == 3
    time.sleep(window)
    store.has = True
    assert r.check_store() == "ok" and store.probes == 4
    time.sleep(window)
    r.lookup(r.bundle, ["u"])  # a request finds the store down: the probe keeps to the request's window too
    assert r.check_store() == "unavailable" and store.probes == 4
    time.sleep(window)
    assert r.check_store() == "ok" and store.probes == 5


def test_store_is_closed_when_the_start_fails(art, monkeypatch):
    closed = []
    real_open = service_module.open_serving_store

    def open_serving_store(url):
        store = real_open(url)
        real_close = store.close
        store.close = lambda: closed.append(url) or real_close()
        return store

    def load_serving_bundle(*args):
        raise ArtifactError("corrupt artifacts")

    monkeypatch.setattr(service_module, "open_serving_store", open_serving_store)
    monkeypatch.setattr(service_module, "load_serving_bundle", load_serving_bundle)
    with pytest.raises(ArtifactError, match="corrupt artifacts"):
        with TestClient(create_app(settings(art.root))):
            pass
    assert len(closed) == 1


@pytest.mark.parametrize("fault", ["locked", "corrupt"])
def test_unopenable_store_serves_fallback_then_recovers(art, tmp_path, fault):
    user, path = cached_user(art), tmp_path / "states.db"
    shutil.copy(art.root / "states.db", path)
    lock = None
    if fault == "locked":  # another process's writer holding the file (locking_mode=EXCLUSIVE)
        lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        lock.execute("PRAGMA locking_mode=EXCLUSIVE")
        lock.execute("BEGIN EXCLUSIVE")
        lock.execute("UPDATE states SET snapshot_ts = snapshot_ts")
    else:
        path.write_bytes(b"not a database" * 500)
    cfg = settings(art.root, store_url=f"sqlite:///{path}?timeout=0.1", store_retry_s=0.1)
    try:
        with TestClient(create_app(cfg)) as c:  # starts: a store that is down means the fallback path
            ready = c.get("/readyz").json()
            assert ready["status"] == "ready" and ready["store"] == "unavailable"
            assert ("locked" if fault == "locked" else "not a readable SQLite") in ready["store_error"]
            r = c.post("/v1/retrieve", json={"user_id": user, "k": 3})
            assert r.status_code == 200 and r.json()["path"] == "fallback" and len(r.json()["items"]) == 3
            if lock is not None:
                lock.close()
                lock = None
            else:
                shutil.copy(art.root / "states.db", path)  # the operator restores the file
            deadline = time.monotonic() + 5
            while c.post("/v1/retrieve", json={"user_id": user, "k": 3}).json()["path"] != "cached":
                assert time.monotonic() < deadline, "the service did not open the store once it could"
                time.sleep(0.05)
            assert c.get("/readyz").json()["store"] == "ok"
    finally:
        if lock is not None:
            lock.close()


def test_sigterm_drains_requests_in_flight(art):
    port = free_port()
    env = {**os.environ, "TWOTOWER_ADMIN_TOKEN": TOKEN, "TWOTOWER_MICRO_BATCH_WAIT_MS": "50"}
    cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(art.root), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)

        clients = [httpx.Client(base_url=url, timeout=10) for _ in range(8)]
        for c in clients:  # connect first (keep-alive), so every request below is accepted before SIGTERM
            assert c.get("/healthz").status_code == 200

        def burst(c: httpx.Client) -> list[int]:  # each request waits 50 ms in the micro-batcher
            codes = []
            for i in range(4):
                try:
                    codes.append(c.post("/v1/retrieve", json={"user_id": f"u{i}", "k": 50}).status_code)
                except httpx.TransportError:
                    codes.append(-1)  # refused after the drain began: allowed, but only after a 200
                    break
            return codes

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(burst, c) for c in clients]
            time.sleep(0.12)  # the first request of each client is now waiting in the batcher
            proc.send_signal(signal.SIGTERM)
            codes = [f.result() for f in futures]
        for c in clients:
            c.close()
        # in-flight requests completed; nothing failed with a 5xx or a reset mid-request
        assert all(cs[0] == 200 for cs in codes), codes
        assert all(code in (200, -1) for cs in codes for code in cs), codes
        # uvicorn drains, shuts the app down, then re-raises SIGTERM so the exit status says why it stopped
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert b"Finished server process" in proc.stderr.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
