"""Several workers: each listens on its own SO_REUSEPORT socket, so keep-alive connections spread over them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis_server import free_port
from test_serve_support import TOKEN, shared_artifacts

from twotower.serve.workers import balanced, reuseport_socket

pytestmark = pytest.mark.skipif(not balanced(), reason="SO_REUSEPORT balancing is Linux-only")


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b"resource_tracker"


def connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """Established TCP connections whose local port is ``port``, counted per owning process (/proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":  # 01 = ESTABLISHED
                inodes.add(f[9])
    out = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        links = [os.readlink(p) for p in fds.iterdir()] if fds.is_dir() else []
        out[pid] = sum(link[8:-1] in inodes for link in links if link.startswith("socket:["))
    return out


@contextlib.contextmanager
def two_workers(root: Path):
    """``twotower serve --workers 2`` on a free port, both workers ready: yields (url, worker pids)."""
    port = free_port()
    env = {**os.environ, "TWOTOWER_ADMIN_TOKEN": TOKEN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(root), "--port", str(port),
           "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        workers: list[int] = []
        while time.monotonic() < deadline:  # both workers up: two children, and /readyz answers
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
            cmdlines = {int(p): _cmdline(p) for p in out.split()}
            workers = [p for p, c in cmdlines.items() if b"resource_tracker" not in c]  # multiprocessing's helper
            try:
                if len(workers) == 2 and httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"two workers not ready in 90 s (children {workers})")
        time.sleep(2.0)  # the second worker's socket is listening too
        yield url, workers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_keep_alive_connections_spread_over_the_workers(art):
    clients: list[httpx.Client] = []
    with two_workers(art.root) as (url, workers):
        try:
            clients = [httpx.Client(base_url=url, timeout=10) for _ in range(32)]
            for c in clients:  # 32 connections opened at once, as a load balancer or a benchmark would
                assert c.get("/healthz").status_code == 200
            counts = connections_by_pid(int(url.rsplit(":", 1)[1]), workers)
            assert sum(counts.values()) == 32, counts
            # one shared socket put 30/2 and 32/0 here; by address hash a 4/28 split has odds of ~1e-5
            assert min(counts.values()) >= 4, counts
        finally:
            for c in clients:
                c.close()


def _samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels`` in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_one_scrape_adds_up_every_worker(art):
    n = 48
    with two_workers(art.root) as (url, workers):
        # A new connection each: the kernel spreads them over both workers by address hash, so a scrape of one
        # worker's own registry would miss the other's share (all 48 on one worker: odds ~4e-15).
        for i in range(n):
            with httpx.Client(base_url=url, timeout=10) as c:
                r = c.post("/v1/retrieve", json={"user_id": str(i % 7), "k": 5})
                assert r.status_code == 200, r.text
        for _ in range(4):  # whichever worker answers the scrape, it reports both workers' totals
            with httpx.Client(base_url=url, timeout=10) as c:
                text = c.get("/metrics").text
            assert _samples(text, "twotower_http_requests_total", route="/v1/retrieve", status="200") == n
            paths = _samples(text, "twotower_retrieve_path_total")
            assert paths == n, paths
            # the version gauge: one series at 1, not one per worker summed to 2
            assert _samples(text, "twotower_served_version") == 1.0


def test_a_port_in_use_is_refused_before_any_worker_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            reuseport_socket("127.0.0.1", port, listen=False)
