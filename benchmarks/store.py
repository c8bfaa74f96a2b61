"""Feature store backends side by side: bytes per user, write throughput, read latency.

For each backend (embedded SQLite in a temporary file; Redis on a throw-away ``redis-server`` on loopback, the
same helper the tests use) and each payload dtype (float32, float16, int8):

* bytes per user: payload and record (header + version + payload) for T=1 and T=8 state tokens at D=64, and the
  measured footprint at T=1 (SQLite file size / users; Redis ``used_memory`` growth / users, keys included);
* put throughput: ``--users`` users (default 100k) written with ``put_many`` calls of 1,000;
* ``get_many`` latency p50/p99 for B=1 and B=256 random users, ``--calls`` calls each (default 1,000).

Client and server share this machine, so Redis figures are loopback latencies without a network hop. Usage::

    python benchmarks/store.py [--users 100000] [--calls 1000] [--out benchmarks/results/store.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from twotower.store import StoreConfig, bytes_per_user, open_store
from twotower.store.codec import record_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' redis-server helper
from redis_server import RedisServer  # noqa: E402

DTYPES = ("float32", "float16", "int8")
VERSION = "bench-v1"
D = 64


def sizes() -> list[dict]:
    rows = []
    for t in (1, 8):
        for dt in DTYPES:
            row = {"T": t, "D": D, "dtype": dt, "payload_bytes": bytes_per_user(t, D, dt)}
            rows.append({**row, "record_bytes": record_bytes(t, D, dt, VERSION)})
    return rows


def latency_ms(store, ids: list[str], B: int, calls: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), (calls + 10, B))
    ts = []
    for p in picks:
        req = [ids[i] for i in p]
        t0 = time.perf_counter()
        got = store.get_many(req, VERSION, (1, D))
        ts.append(time.perf_counter() - t0)
        assert got.found.all()
    ts = np.array(ts[10:]) * 1e3  # the first calls warm caches and connections
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def bench(backend: str, dtype: str, url: str, n: int, calls: int, footprint) -> dict:
    store = open_store(url, StoreConfig(dtype=dtype, batch=1000))
    ids = [f"user{i:08d}" for i in range(n)]
    rng = np.random.default_rng(0)
    before = footprint(store)
    put_s = 0.0
    for lo in range(0, n, 1000):  # data generation is not timed
        x = rng.normal(size=(min(1000, n - lo), 1, D)).astype(np.float32)
        snap = np.full(len(x), 1_700_000_000, np.int64)
        t0 = time.perf_counter()
        store.put_many(ids[lo : lo + len(x)], x, snap, snap - 60, VERSION)
        put_s += time.perf_counter() - t0
    row = {"backend": backend, "dtype": dtype, "users": n, "put_users_per_s": round(n / put_s),
           "stored_bytes_per_user": round((footprint(store) - before) / n, 1)}  # fmt: skip
    for B in (1, 256):
        p50, p99 = latency_ms(store, ids, B, calls, seed=B)
        row[f"get_b{B}_p50_ms"], row[f"get_b{B}_p99_ms"] = round(p50, 3), round(p99, 3)
    store.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/store.json")
    args = ap.parse_args()

    size_rows = sizes()
    print(f"{'T':>2} {'D':>3} {'dtype':>8} {'payload B':>10} {'record B':>9}")
    for r in size_rows:
        print(f"{r['T']:>2} {r['D']:>3} {r['dtype']:>8} {r['payload_bytes']:>10} {r['record_bytes']:>9}")

    rows = []
    head = f"{'backend':>7} {'dtype':>8} {'stored B/user':>13} {'put users/s':>11} " + " ".join(
        f"{f'B={b} p{q}':>11}" for b in (1, 256) for q in (50, 99)
    )
    print(f"\nT=1, D={D}, {args.users} users, {args.calls} get_many calls per batch size (ms)\n{head}")
    with tempfile.TemporaryDirectory() as tmp, RedisServer(dir=Path(tmp) / "redis") as server:

        def sqlite_bytes(store) -> int:
            store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return store.path.stat().st_size

        def redis_bytes(store) -> int:
            return int(store.client.info("memory")["used_memory"])

        for dtype in DTYPES:
            for backend, url, footprint in (
                ("sqlite", f"sqlite:///{tmp}/{dtype}.db", sqlite_bytes),
                ("redis", f"{server.url}?namespace=bench-{dtype}", redis_bytes),
            ):
                row = bench(backend, dtype, url, args.users, args.calls, footprint)
                rows.append(row)
                print(
                    f"{backend:>7} {dtype:>8} {row['stored_bytes_per_user']:>13} {row['put_users_per_s']:>11} "
                    + " ".join(f"{row[f'get_b{b}_p{q}_ms']:>11.3f}" for b in (1, 256) for q in (50, 99)),
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "store", "D": D, "users": args.users, "calls": args.calls, "sizes": size_rows, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
