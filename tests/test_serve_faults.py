"""Faults: the feature store going away and coming back (a real redis-server), and a graceful SIGTERM drain."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from test_serve_support import TOKEN, settings, shared_artifacts

from twotower.data import SequenceData
from twotower.refresh import refresh_states
from twotower.serve.app import create_app
from twotower.store.testing import RedisServer, free_port


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


def test_sigterm_drains_requests_in_flight(art):
    port = free_port()
    env = {**os.environ, "TWOTOWER_ADMIN_TOKEN": TOKEN, "TWOTOWER_MICRO_BATCH_WAIT_MS": "50"}
    cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(art.root), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not become ready in 60 s")

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
