"""Load test of the online service over a 1M-item index, on loopback: latency, throughput, hot swap, memory.

1. Artifacts (cached under ``runs/bench_serve``): a synthetic log in which every one of 1M items occurs,
   a hybrid model (the ML-1M hybrid shape, dim 64) trained for a short time budget, the real candidate tower
   over all 1M items, states of every user in SQLite, and an HNSW index; a second published version (a
   hard-linked copy) is the target of the hot swap.
2. ``twotower serve`` as a subprocess on 127.0.0.1, and an open-loop load generator: requests are scheduled
   at a fixed rate over a bounded number of keep-alive connections (a minimal asyncio HTTP/1.1 client, cheap
   enough to share two cores with the server), and latency is measured from the *scheduled* send time, so a
   stalled server cannot hide its queue (no coordinated omission).
3. Phases: steady rate; the same with ``POST /admin/reload`` to the other version mid-run (no failed request
   allowed); a closed-loop saturation run; and the steady rate with micro-batching off.

Prints a table and writes ``benchmarks/results/serve_load.json``. ``--root ROOT`` loads an existing artifact
root instead of building one; ``--rerank K`` asks the published ranker to re-score a shortlist of K in every
request; ``--phases steady`` runs the steady rate and the saturation run only. ``--matryoshka 16 32`` trains
the synthetic root's model with those Matryoshka prefixes (its own cache), and ``--index``, ``--prefix-dim``,
``--shortlist``, ``--nprobe``, ``--ef-search``, ``--pq-m``, ``--no-refine``, ``--refine-factor``, ``--rows-dtype``
choose the index it publishes (adaptive retrieval when ``--prefix-dim`` > 0; a cached root with another index
gets a new version). The server's resident memory (RSS, anonymous and file-backed, over its processes) is read
after the steady phase.
Usage::

    python benchmarks/serve_load.py [--rate 500] [--seconds 30] [--items 1000000]
    python benchmarks/serve_load.py --root ROOT --rerank 100 --k 10 --phases steady --out FILE
    python benchmarks/serve_load.py --matryoshka 16 32 --index ivfpq --prefix-dim 16 --pq-m 8 --no-refine \
        --nprobe 8 --out benchmarks/results/serve_load_adaptive.json
    python benchmarks/serve_load.py --items 10000000 --index ivfpq --pq-m 32 --refine-factor 16 --nprobe 32 \
        --rows-dtype float16 --out benchmarks/results/serve_load_10m.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("serve_load")


def build(
    cache: Path,
    n_items: int,
    n_users: int,
    topics: int = 1000,
    matryoshka: tuple[int, ...] = (),
    index_cfg=None,
) -> Path:
    """The artifact root (cached). The log has structure, so the trained item vectors do: every item belongs
    to one of ``topics`` topics (its author in the item table), every user follows two topics, and 80 % of a
    user's events are items of those topics. Every item occurs at least once.

    ``matryoshka``: prefix widths the model is trained with (``train.matryoshka_dims``; its own cache);
    ``index_cfg``: the published index (default HNSW M=16 over the full width). A cached root whose current
    index was built with another config gets a new version published with this one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from twotower.data import ItemSchema, LogSchema, PrepareConfig, SequenceData, prepare_files
    from twotower.index import IndexConfig
    from twotower.index.publish import build_and_publish
    from twotower.jobs.serving import build_artifacts
    from twotower.train.config import RunConfig
    from twotower.train.trainer import Trainer

    cache = cache / (f"topics-{n_items}" + ("-mrl" + "-".join(map(str, matryoshka)) if matryoshka else ""))
    root = cache / "root"
    index_cfg = index_cfg or IndexConfig(backend="hnsw", hnsw_m=16, hnsw_ef_construction=64, hnsw_ef_search=64)
    emb = [d for d in (root / "embeddings").glob("*") if (d / "manifest.json").is_file()] if root.is_dir() else []
    if (root / "index" / "CURRENT").is_file():
        published = _published(root).get("config", {})
        if all(published.get(k) == v for k, v in dataclasses.asdict(index_cfg).items() if k != "extra"):
            return root
        log.info("the cached root's index differs from the one asked for: publishing a new version")
    if emb and (root / "states.db").is_file():  # an earlier run got as far as the index (or another one): publish
        build_and_publish(emb[0], root / "index", index_cfg)
        return root
    rng = np.random.default_rng(0)
    topic_of = np.arange(n_items) % topics  # item -> topic
    per_topic = n_items // topics
    user_topics = np.stack([np.arange(n_users) % topics, (np.arange(n_users) * 7 + 3) % topics], 1)
    # every item once, by a user who follows its topic
    once = rng.permutation(n_items)
    once_users = topic_of[once] + topics * rng.integers(0, max(n_users // topics, 1), n_items)
    once_users = np.minimum(once_users, n_users - 1)
    # a Zipf-popular tail: 80 % inside one of the user's topics, 20 % anywhere
    n_extra = n_items // 2
    extra_users = rng.integers(0, n_users, n_extra)
    rank = np.minimum(rng.zipf(1.3, n_extra) - 1, per_topic - 1)
    in_topic = user_topics[extra_users, rng.integers(0, 2, n_extra)] + topics * rank
    anywhere = np.minimum(rng.zipf(1.3, n_extra) - 1, n_items - 1)
    extra_items = np.where(rng.random(n_extra) < 0.8, in_topic, anywhere)
    items = np.concatenate([once, extra_items])
    users = np.concatenate([once_users, extra_users])
    ts = 1_600_000_000 + rng.integers(0, 30 * 86400, len(items))
    log.info("writing a log of %d events over %d items in %d topics", len(items), n_items, topics)
    table = pa.table({
        "user_id": pa.array(np.char.add("user", users.astype(str))),
        "item_id": pa.array(np.char.add("item", items.astype(str))),
        "timestamp": pa.array(ts),
        "click": pa.array(np.ones(len(items), np.int8)),
        "like": pa.array((rng.random(len(items)) < 0.3).astype(np.int8)),
        "surface": pa.array(rng.choice(["home", "search", "related"], len(items))),
    })  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, cache / "log.parquet")
    pq.write_table(pa.table({"item_id": pa.array(np.char.add("item", np.arange(n_items).astype(str))),
                             "topic": pa.array(np.char.add("topic", topic_of.astype(str)))}),
                   cache / "items.parquet")  # fmt: skip
    prep = PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface"),
                         items=ItemSchema(author_id="topic"))  # fmt: skip
    prepare_files(cache / "log.parquet", cache / "data", prep, items_path=cache / "items.parquet")
    from twotower import config as cfgmod

    cfg = cfgmod.load(RunConfig, REPO / "configs" / "ml1m_hybrid.toml")
    cfg.model.item_buckets = 1 << 20  # 1M items, 2 hashes: ~0.45 expected fully colliding pairs
    cfg.model.max_len = 50
    cfg.train.epochs, cfg.train.time_budget_s, cfg.train.eval_users, cfg.train.num_uniform = 1, 30, 0, 256
    cfg.train.holdout_users, cfg.train.eval_every = 0.0, 0  # no full-corpus validation over 1M items
    cfg.train.matryoshka_dims = list(matryoshka)
    Trainer(SequenceData.load(cache / "data"), cfg, cache / "run", overwrite=True).fit(progress=False)
    # The default recall floor (0.95 @100 against exact, on the model's user vectors) applies.
    res = build_artifacts(cache / "run", root, index_config=index_cfg, progress=False)
    log.info("built %s", res)
    return root


def _published(root: Path) -> dict:
    """The manifest of the root's current index (its config, its measured recall)."""
    from twotower.index.base import read_manifest
    from twotower.index.publish import current_path

    return read_manifest(current_path(root / "index"), verify=False)


def _recall(root: Path) -> dict:
    return _published(root).get("recall", {})


def publish_copy(root: Path) -> str:
    """Publish a hard-linked copy of the current index as a new version (the hot swap's target)."""
    from twotower.index.publish import current_version, history

    cur = current_version(root / "index")
    new = f"{cur.split('-copy')[0]}-copy{int(time.time())}"
    shutil.copytree(root / "index" / "versions" / cur, root / "index" / "versions" / new, copy_function=os.link)
    (root / "index" / "history.json").write_text(json.dumps(history(root / "index") + [new], indent=2) + "\n")
    tmp = root / "index" / ".CURRENT.tmp"
    tmp.write_text(new + "\n")
    os.replace(tmp, root / "index" / "CURRENT")
    return new


def request_bodies(root: Path, n: int, seed: int = 1, k: int = 100, rerank: int = 0) -> list[bytes]:
    """POST bodies: 90 % known users with 0-5 recent events and exclusions, 10 % unknown users; ``k`` items,
    re-scored by the ranker from a shortlist of ``rerank`` when it is > 0."""
    from twotower.data import SequenceData

    data = SequenceData.load(Path((next((root / "models").iterdir()) / "data_path.txt").read_text().strip()))
    users, items = data.user_ids().astype(str), data.item_ids().astype(str)
    action = (data.manifest.get("actions") or [None])[0]
    surface = (data.manifest.get("surfaces") or [None])[0]
    rng = np.random.default_rng(seed)
    t_end = int(data.event_ts.max())
    out = []
    for i in range(n):
        uid = users[rng.integers(len(users))] if rng.random() < 0.9 else f"new-user-{i}"
        ev = [{"item_id": items[rng.integers(len(items))], "actions": [action] if action else [],
               "timestamp": t_end + 10 + j} for j in range(int(rng.integers(0, 6)))]  # fmt: skip
        ctx = {"recent_events": ev, "surface": surface, "timestamp": t_end + 60}
        excl = [items[rng.integers(len(items))] for _ in range(int(rng.integers(0, 20)))]
        body = {"user_id": uid, "k": k, "context": ctx, "exclude_item_ids": excl}
        if rerank:
            body["rerank"] = {"candidates": rerank}
        payload = json.dumps(body).encode()
        head = (f"POST /v1/retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
        out.append(head + payload)
    return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def load(port: int, bodies: list[bytes], seconds: float, rate: float | None, conns: int, on_half=None) -> dict:
    """Send ``bodies`` round-robin for ``seconds``: at ``rate`` req/s (open loop) or as fast as ``conns``
    connections allow (``rate=None``, closed loop). Latency is from the scheduled send time."""
    t0 = time.perf_counter()
    lat, errors, statuses = [], 0, {}
    counter = iter(range(10**9))
    lock = asyncio.Lock()
    half_done = asyncio.Event()

    async def conn_loop() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                async with lock:
                    i = next(counter)
                sched = t0 + (i / rate if rate else 0.0)
                if sched - t0 >= seconds or time.perf_counter() - t0 >= seconds:
                    return
                wait = sched - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                start = sched if rate else time.perf_counter()
                writer.write(bodies[i % len(bodies)])
                try:
                    status = await asyncio.wait_for(_read_response(reader), timeout=10)
                except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                lat.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    async def halfway() -> None:
        await asyncio.sleep(seconds / 2)
        if on_half is not None:
            await on_half()
        half_done.set()

    tasks = [asyncio.create_task(conn_loop()) for _ in range(conns)] + [asyncio.create_task(halfway())]
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000.0
    return {
        "requests": len(lat),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "throughput_rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
    }


class Server:
    """``twotower serve`` as a subprocess on a free loopback port."""

    def __init__(self, root: Path, token: str, **env: str) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' redis-server helper
        from redis_server import free_port

        self.port, self.token = free_port(), token
        env_all = {**os.environ, "TWOTOWER_ADMIN_TOKEN": token, **{f"TWOTOWER_{k.upper()}": v for k, v in env.items()}}
        cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(root), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env_all, stderr=open(root.parent / "server.log", "ab"))  # noqa: SIM115
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {root.parent / 'server.log'}")
            if self._get("/readyz")[0] == 200:
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("server not ready in 180 s")

    def _get(self, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict]:
        import http.client

        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        except OSError:
            return 0, {}

    def memory(self) -> dict:
        """Resident memory of the server and its workers (MiB, from /proc): total, anonymous (private to a
        process: FAISS structures, tables) and file-backed (memory-mapped arrays, shared between workers)."""
        pids = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):  # children of any of its threads
            try:
                pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        out: dict = {"processes": len(pids), "per_process": []}
        for pid in pids:
            try:  # smaps_rollup's Pss counts a page shared by n processes as 1/n in each: its sum counts it once
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                lines += Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            mine = {}
            for line in lines:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Pss"):
                    mine[f"{key}_mib"] = round(int(value.split()[0]) / 1024, 1)
            for key, mib in mine.items():
                out[key] = round(out.get(key, 0.0) + mib, 1)
            out["per_process"].append(mine)
        return out

    async def reload(self) -> tuple[int, dict]:
        return await asyncio.to_thread(self._get, "/admin/reload", "POST", {"Authorization": f"Bearer {self.token}"})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=500.0, help="open-loop request rate (req/s)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each timed phase")
    p.add_argument("--conns", type=int, default=32, help="keep-alive connections (bounded concurrency)")
    p.add_argument("--cache", default=str(REPO / "runs" / "bench_serve"))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="server setting, e.g. faiss_threads=2 (becomes TWOTOWER_FAISS_THREADS)",
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load.json"))
    p.add_argument("--root", help="an existing artifact root (default: build the synthetic 1M-item one)")
    p.add_argument("--k", type=int, default=100, help="items per request")
    p.add_argument("--rerank", type=int, default=0, help="K': the ranker re-scores this shortlist (0 = off)")
    p.add_argument("--phases", choices=["all", "steady"], default="all")
    p.add_argument("--matryoshka", type=int, nargs="*", default=[], metavar="D",
                   help="train the synthetic root's model with these Matryoshka prefixes, e.g. 16 32")  # fmt: skip
    p.add_argument("--index", default="hnsw", help="backend of the synthetic root's index (hnsw, ivfflat, ...)")
    p.add_argument("--prefix-dim", type=int, default=0, help="adaptive retrieval: index this prefix (0 = off)")
    p.add_argument("--shortlist", type=int, default=4, help="adaptive retrieval: re-score shortlist x k")
    p.add_argument("--nprobe", type=int, default=32, help="IVF lists probed")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW search depth")
    p.add_argument("--pq-m", type=int, default=16, help="IVF-PQ sub-quantisers (must divide the indexed width)")
    p.add_argument("--no-refine", action="store_true", help="IVF-PQ without a float refine of its shortlist")
    p.add_argument("--refine-factor", type=int, default=4, help="IVF-PQ: candidates re-scored per result")
    p.add_argument("--rows-dtype", default="float32", choices=["float32", "float16"],
                   help="the index's own rows (IVF-PQ re-scoring; memory-mapped when served)")  # fmt: skip
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_build = time.perf_counter()
    if args.root:
        root = Path(args.root)
    else:
        from twotower.index import IndexConfig

        index_cfg = IndexConfig(
            backend=args.index,
            hnsw_m=16,
            hnsw_ef_construction=64,
            hnsw_ef_search=args.ef_search,
            ivf_nprobe=args.nprobe,
            prefix_dim=args.prefix_dim,
            shortlist=args.shortlist,
            pq_m=args.pq_m,
            refine=not args.no_refine,
            refine_factor=args.refine_factor,
            rows_dtype=args.rows_dtype,
        )
        root = build(Path(args.cache), args.items, args.users, matryoshka=tuple(args.matryoshka), index_cfg=index_cfg)
    build_s = time.perf_counter() - t_build
    bodies = request_bodies(root, 4000, k=args.k, rerank=args.rerank)
    token = secrets.token_urlsafe(24)
    results: dict = {}
    swap: dict = {}
    # one worker process per core: each has its own GIL (a single process saturates one core at ~450 req/s)
    server_env = {"workers": str(os.cpu_count() or 1), **dict(kv.split("=", 1) for kv in args.set)}
    server = Server(root, token, **server_env)
    try:
        asyncio.run(load(server.port, bodies, 3.0, args.rate, args.conns))  # warm-up, not recorded
        results["steady"] = asyncio.run(load(server.port, bodies, args.seconds, args.rate, args.conns))
        memory = server.memory()
        if args.phases == "steady":
            results["saturation (closed loop)"] = asyncio.run(load(server.port, bodies, args.seconds / 3, None, 16))
            _, ready = server._get("/readyz")
            return report(args, root, ready, results, {}, server_env, build_s, memory)
        target = publish_copy(root)

        async def do_reload() -> None:
            t = time.perf_counter()
            status, body = await server.reload()
            swap.update(status=status, seconds=round(time.perf_counter() - t, 2), target=target, response=body)

        results["steady+reload"] = asyncio.run(
            load(server.port, bodies, args.seconds, args.rate, args.conns, on_half=do_reload)
        )
        results["saturation (closed loop)"] = asyncio.run(load(server.port, bodies, args.seconds / 3, None, 16))
        _, ready = server._get("/readyz")
    finally:
        server.stop()
    server = Server(root, token, **{**server_env, "micro_batch": "1"})
    try:
        asyncio.run(load(server.port, bodies, 3.0, args.rate, args.conns))
        results["steady, micro-batching off"] = asyncio.run(
            load(server.port, bodies, args.seconds, args.rate, args.conns)
        )
    finally:
        server.stop()

    return report(args, root, ready, results, swap, server_env, build_s, memory)


def report(
    args, root: Path, ready: dict, results: dict, swap: dict, server_env: dict, build_s: float, memory: dict
) -> int:
    """Print the table, write the JSON; 0 when no request failed (and a hot swap, if run, answered 200)."""
    what = f"k={args.k}" + (f", rerank K'={args.rerank}" if args.rerank else "")
    print(f"\n{ready.get('items', 0):,}-item service on 2 cores (server + load generator), rate {args.rate:.0f} req/s, "
          f"{what}")  # fmt: skip
    keys = ["requests", "errors", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    print(f"{'phase':<30}" + "".join(f"{k:>15}" for k in keys))
    for name, r in results.items():
        print(f"{name:<30}" + "".join(f"{str(r[k]):>15}" for k in keys))
    if swap:
        print(f"hot swap: HTTP {swap.get('status')} in {swap.get('seconds')} s -> {swap.get('target')}")
    print(f"server memory after the steady phase ({memory.get('processes')} processes): RSS "
          f"{memory.get('VmRSS_mib')} MiB, anonymous {memory.get('RssAnon_mib')} MiB, file-backed "
          f"{memory.get('RssFile_mib')} MiB; proportional (shared pages once) {memory.get('Pss_mib')} MiB")  # fmt: skip
    out = {
        "protocol": "n/a: latency, throughput and ANN recall against exact (no user-quality figure)",
        "seeds": [0],
        "items": int(ready.get("items", 0)),
        "index_recall": _recall(root),
        "rate": args.rate,
        "k": args.k,
        "rerank": args.rerank,
        "ranker": ready.get("ranker"),
        "seconds_per_phase": args.seconds,
        "connections": args.conns,
        "server_settings": server_env,
        "cores": os.cpu_count(),
        "build_or_cache_seconds": round(build_s, 1),
        "phases": results,
        "hot_swap": swap,
        "server_memory_after_steady": memory,
        "note": "server and load generator share the machine's cores; timings taken under contention",
    }
    steady = results.get("steady", {})
    out["summary"] = {
        "index_version": ready.get("index_version"),
        "index_recall_at_100": out["index_recall"].get("recall@100"),
        "steady_p50_ms": steady.get("p50_ms"),
        "steady_p99_ms": steady.get("p99_ms"),
        "steady_throughput_rps": steady.get("throughput_rps"),
        "saturation_throughput_rps": results.get("saturation (closed loop)", {}).get("throughput_rps"),
        "errors": sum(r["errors"] for r in results.values()),
        "hot_swap_status": swap.get("status"),
        "server_rss_mib": memory.get("VmRSS_mib"),
        "server_rss_anon_mib": memory.get("RssAnon_mib"),
        "server_pss_mib": memory.get("Pss_mib"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    ok = (not swap or swap.get("status") == 200) and all(r["errors"] == 0 for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
