"""The service half of the chaos suite (run by ``benchmarks/chaos.py``), on loopback only.

* **Reloads under load**: an artifact root with two published versions (two hybrid runs of different seeds,
  each through ``twotower serve-prepare``); ``twotower serve`` answers a steady request stream while
  ``CURRENT`` is switched between the two (``index rollback``) and ``POST /admin/reload`` is sent, ``--reloads``
  times. Recorded: failed requests (non-200 or no answer), refused reloads, and the RSS of the server's
  processes after the warm-up reloads (the first 10 %, at least 5) and at the end.
* **Redis killed and restarted empty**: the same service over a ``redis://`` store (a throw-away
  ``redis-server``, ``tests/redis_server.py``); under the request stream the server is SIGKILLed, and started
  again empty on the same port. Recorded: 5xx answers, and the seconds from the restart until ``/readyz``
  says ``"empty for model <v>"`` (it must within the store retry window, ``TWOTOWER_STORE_RETRY_S`` = 1 s,
  plus a second for the probe's round trip on busy cores).
* **schemathesis**: ``pytest tests/test_serve_contract.py`` (every check over every endpoint) when it exists.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

from chaos_jobs import REPO, RUN_TOML, Reference, leftovers, run_job
from serve_load import Server, request_bodies

sys.path.insert(0, str(REPO / "tests"))  # the tests' redis-server launcher
from redis_server import RedisServer  # noqa: E402

log = logging.getLogger("chaos")

RATE = 40.0  # requests per second, over CONNS keep-alive connections: steady, and light on two shared cores
CONNS = 4
RSS_LIMIT = 0.05  # growth after warm-up allowed over the reloads
RETRY_S = 1.0  # the service's store retry window (its default)
RELOAD_GAP_S = 0.05  # between reloads (one takes ~30 ms on the tiny model): requests land before, during and after


def tree_rss_kib(pid: int) -> int:
    """Resident memory (KiB) of process ``pid`` and its descendants (uvicorn's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


PATH = re.compile(rb'"path":\s*"(\w+)"')


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0)
    return int(head[9:12]), await reader.readexactly(length)


class Stream:
    """A steady request stream at ``RATE`` req/s over ``CONNS`` keep-alive connections, until :meth:`stop`
    (or ``max_s``). Counts answers by status and by the ``path`` they took (cached, cold_start, fallback); a
    request without an answer (timeout, reset) is an error."""

    def __init__(self, port: int, bodies: list[bytes], max_s: float = 540.0) -> None:
        self.port, self.bodies, self.max_s = port, bodies, max_s
        self.statuses: dict[int, int] = {}
        self.paths: dict[str, int] = {}
        self.errors = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.errors

    async def run(self) -> None:
        t0 = time.perf_counter()
        counter = iter(range(10**9))

        async def conn() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                while not self._stop.is_set() and time.perf_counter() - t0 < self.max_s:
                    i = next(counter)
                    wait = t0 + i / RATE - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(self.bodies[i % len(self.bodies)])
                    try:
                        status, body = await asyncio.wait_for(read_response(reader), timeout=10)
                    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                        self.errors += 1
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                        continue
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    path = PATH.search(body)
                    if path:
                        self.paths[path[1].decode()] = self.paths.get(path[1].decode(), 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(conn() for _ in range(CONNS)))

    def run_beside(self, job) -> dict:
        """Run the stream and the coroutine function ``job`` (which calls :meth:`stop`) together; the result."""

        async def both() -> None:
            await asyncio.gather(self.run(), job())

        asyncio.run(both())
        return self.result()

    def result(self) -> dict:
        failed = self.errors + sum(n for s, n in self.statuses.items() if s != 200)
        return {"requests": self.requests, "failed_requests": failed, "no_answer": self.errors,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "status_5xx": sum(n for s, n in self.statuses.items() if s >= 500),
                "paths": dict(sorted(self.paths.items()))}  # fmt: skip


def serve_prepare(run: Path, root: Path, store: str | None = None) -> None:
    args = ["serve-prepare", "--run", str(run), "--artifacts", str(root), "--backend", "exact", "--no-progress"]
    run_job(args + (["--store", store] if store else []), root.parent)


def reload_under_load(ref: Reference, work: Path, reloads: int, workers: int) -> dict:
    """``reloads`` reloads, alternating between two published versions, under the request stream."""
    from twotower.index.publish import history, rollback

    base = work / "serve-reload"
    base.mkdir()
    (base / "run2.toml").write_text(RUN_TOML.format(seed=1, epochs=2))
    run_job(["train", "--data", str(ref.data), "--config", str(base / "run2.toml"), "--out", str(base / "run2"),
             "--no-progress"], base)  # fmt: skip
    root = base / "root"
    serve_prepare(ref.run, root)
    serve_prepare(base / "run2", root)
    versions = history(root / "index")[-2:]  # CURRENT is the second; the first reload goes to the first
    bodies = request_bodies(root, 2000)
    server = Server(root, secrets.token_urlsafe(24), workers=str(workers))
    warmup = min(max(5, reloads // 10), reloads)
    out: dict = {"reloads": reloads, "warmup_reloads": warmup, "workers": workers, "versions": versions,
                 "answered_unchanged": 0, "retried_busy": 0}  # fmt: skip
    refused: list = []
    try:
        stream = Stream(server.port, bodies)

        async def reloader() -> None:
            await asyncio.sleep(2.0)  # the stream is running
            out["rss_start_kib"] = tree_rss_kib(server.proc.pid)
            t0 = time.perf_counter()
            for i in range(reloads):
                target = versions[i % 2]
                await asyncio.to_thread(rollback, root / "index", target)
                status, body = await server.reload()
                # with several workers, the one answering may be busy with the reload the previous one announced:
                # 409 "already running; retry when it has finished", which is what a client should then do
                for _ in range(50):
                    if status != 409 or "already running" not in str(body.get("error")):
                        break
                    out["retried_busy"] += 1
                    await asyncio.sleep(0.1)
                    status, body = await server.reload()
                if status != 200 or body.get("index_version") != target:
                    refused.append({"reload": i, "status": status, "body": body})
                # with several workers the one answering may have switched already (the previous reload's
                # announcement made it reload, and CURRENT had moved on): 200 on the target, "changed": false
                out["answered_unchanged"] += status == 200 and not body.get("changed")
                if i + 1 == warmup:
                    out["rss_after_warmup_kib"] = tree_rss_kib(server.proc.pid)
                await asyncio.sleep(RELOAD_GAP_S)
            out["reload_seconds"] = round(time.perf_counter() - t0, 1)
            await asyncio.sleep(1.0)
            out["rss_end_kib"] = tree_rss_kib(server.proc.pid)
            stream.stop()

        out.update(stream.run_beside(reloader))
    finally:
        server.stop()
    out["refused_reloads"] = refused[:5]
    out["refused_reload_count"] = len(refused)
    out["rss_growth"] = round(out["rss_end_kib"] / out["rss_after_warmup_kib"] - 1.0, 4)
    out["leftovers"] = leftovers(root)
    return out


def redis_restart(ref: Reference, work: Path, workers: int) -> dict:
    """Redis SIGKILLed under load and started again, empty, on the same port."""
    base = work / "serve-redis"
    base.mkdir()
    root = base / "root"
    with RedisServer() as redis:
        serve_prepare(ref.run, root, redis.url)
        bodies = request_bodies(root, 2000)
        server = Server(root, secrets.token_urlsafe(24), workers=str(workers), store_url=redis.url)
        out: dict = {"workers": workers, "retry_window_s": RETRY_S}
        try:
            out["readyz_before"] = server._get("/readyz")[1].get("store")
            stream = Stream(server.port, bodies)

            def paths_since(before: dict[str, int]) -> dict[str, int]:
                return {k: v - before.get(k, 0) for k, v in sorted(stream.paths.items()) if v > before.get(k, 0)}

            async def fault() -> None:
                await asyncio.sleep(3.0)
                at_kill = dict(stream.paths)
                out["paths_before_kill"] = paths_since({})
                redis.proc.kill()  # SIGKILL: no shutdown, the data is gone (persistence is off)
                redis.proc.wait()
                await asyncio.sleep(3.0)  # served meanwhile on the fallback path
                out["readyz_while_down"] = (await asyncio.to_thread(server._get, "/readyz"))[1].get("store")
                out["paths_while_down"] = paths_since(at_kill)
                at_restart = dict(stream.paths)
                await asyncio.to_thread(redis.start)
                t0 = time.perf_counter()
                status = None
                while time.perf_counter() - t0 < 10.0:
                    _, body = await asyncio.to_thread(server._get, "/readyz")
                    status = body.get("store")
                    if status == f"empty for model {body.get('model_version')}":
                        out["empty_reported_after_s"] = round(time.perf_counter() - t0, 2)
                        break
                    await asyncio.sleep(0.05)
                out["readyz_after_restart"] = status
                await asyncio.sleep(3.0)  # and after
                out["paths_after_restart"] = paths_since(at_restart)
                stream.stop()

            out.update(stream.run_beside(fault))
        finally:
            server.stop()
    return out


def schemathesis_tests() -> dict:
    files = sorted(REPO.glob("tests/test_serve_contract.py"))
    if not files:
        return {"result": "skipped", "note": "no tests/test_serve_contract.py in this checkout"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", *map(str, files)]
    proc = subprocess.run(cmd, cwd=REPO, env=os.environ, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"result": "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})", "note": tail[0],
            "files": [str(f.relative_to(REPO)) for f in files]}  # fmt: skip


def run_all(ref: Reference, work: Path, reloads: int, workers: int) -> dict:
    """Every service fault; ``rows`` for the table, the details beside them."""
    rel = reload_under_load(ref, work, reloads, workers)
    log.info("reloads: %s", {k: v for k, v in rel.items() if k != "refused_reloads"})
    red = redis_restart(ref, work, workers)
    log.info("redis: %s", red)
    schema = schemathesis_tests()
    empty_in_time = red.get("empty_reported_after_s", float("inf")) <= RETRY_S + 1.0
    rows = [
        {"fault": f"{reloads} reloads under load", "trials": reloads,
         "failures": rel["failed_requests"] + rel["refused_reload_count"] + int(rel["rss_growth"] > RSS_LIMIT),
         "leftovers": len(rel["leftovers"]), "rss_growth": f"{100 * rel['rss_growth']:+.1f} %",
         "note": f"{rel['requests']} requests, {rel['failed_requests']} failed; RSS "
                 f"{rel['rss_after_warmup_kib'] // 1024} -> {rel['rss_end_kib'] // 1024} MiB after "
                 f"{rel['warmup_reloads']} warm-up reloads"},
        {"fault": "Redis SIGKILLed, restarted empty", "trials": 1,
         "failures": int(red["status_5xx"] > 0 or red["no_answer"] > 0 or not empty_in_time),
         "leftovers": 0, "rss_growth": "",
         "note": f"{red['requests']} requests, {red['status_5xx']} 5xx; /readyz "
                 f"{red.get('readyz_after_restart')!r} {red.get('empty_reported_after_s')} s after the restart"},
        {"fault": "schemathesis (all checks)", "trials": int(schema["result"] != "skipped"),
         "failures": int(schema["result"].startswith("failed")), "leftovers": 0, "rss_growth": "",
         "note": schema.get("note", "")},
    ]  # fmt: skip
    return {"rows": rows, "reload": rel, "redis": red, "schemathesis": schema}
