"""Wall time and peak RSS of `twotower prepare` on ML-1M and on synthetic logs of 1M and 10M events (and,
with ``--sizes ... 50000000 --partitioned 10``, 50M events, and the largest log again as a hive-partitioned
directory of that many Parquet files: ``part=NN/data.parquet``, read as one pyarrow dataset).

Each size runs in its own child process, so its peak RSS is its own; ``import_rss_mib`` is that process's RSS
after the imports, before preparing. Targets (2 cores): ML-1M <= 30 s and <= 2 GB; time about linear in events;
10M synthetic events <= ~1.2 GB. Usage::

    python benchmarks/prepare.py [--sizes 1000000 10000000] [--partitioned N] [--out benchmarks/results/prepare.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mib() -> float:
    """This process's peak RSS in MiB: /proc's VmHWM where there is one. ru_maxrss is no good in a child: Linux
    keeps the parent's peak across fork + exec, so a child of a parent that has just generated a 10M-event log
    read 2.8 GB whatever it did itself."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(kind: str, src: str, out: str) -> None:
    """Runs in a fresh process: prepare once, print seconds and own peak RSS as JSON."""
    from twotower.data import LogSchema, PrepareConfig, prepare_files, prepare_movielens

    base = _peak_rss_mib()  # interpreter + numpy/pyarrow/pandas
    t0 = time.perf_counter()
    if kind == "ml-1m":
        m = prepare_movielens(out)
    else:
        m = prepare_files(src, out, PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface")))
    secs = time.perf_counter() - t0
    rss = _peak_rss_mib()
    print(
        json.dumps(
            {
                "seconds": round(secs, 2),
                "peak_rss_mib": round(rss, 1),
                "import_rss_mib": round(base, 1),
                "events": m["num_events"],
                "users": m["num_users"],
                "items": m["num_items"],
            }
        )
    )


def run_one(kind: str, src: str, out: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", kind, src, out], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def partition(src: str, out: str, parts: int) -> int:
    """Rewrite the Parquet log ``src`` as ``out/part=NN/data.parquet``, ``parts`` contiguous row ranges, streamed."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(src)
    per = -(-f.metadata.num_rows // parts)
    writer, part, written = None, -1, per
    for batch in f.iter_batches(batch_size=1 << 20):
        while batch.num_rows:
            if written >= per:
                if writer is not None:
                    writer.close()
                part += 1
                Path(out, f"part={part:02d}").mkdir(parents=True)
                writer, written = pq.ParquetWriter(Path(out, f"part={part:02d}", "data.parquet"), batch.schema), 0
            take = min(per - written, batch.num_rows)
            writer.write_batch(batch.slice(0, take))
            written += take
            batch = batch.slice(take)
    if writer is not None:
        writer.close()
    return part + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", default="benchmarks/results/prepare.json")
    ap.add_argument("--partitioned", type=int, default=0, help="also the largest log as N partition files")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    from twotower.data.synth import generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append({"input": "ml-1m", **run_one("ml-1m", "", f"{tmp}/ml")})
        for n in args.sizes:
            log = f"{tmp}/synth_{n}.parquet"
            t0 = time.perf_counter()
            generate(users=max(1000, n // 50), items=max(1000, n // 20), events=n, out=log, seed=0, progress=False)
            gen_s = time.perf_counter() - t0
            rows.append(
                {"input": f"synth-{n}", "synth_seconds": round(gen_s, 1), **run_one("synth", log, f"{tmp}/s{n}")}
            )
        if args.partitioned and args.sizes:
            n = args.sizes[-1]
            parts = partition(f"{tmp}/synth_{n}.parquet", f"{tmp}/synth_{n}_dir", args.partitioned)
            rows.append({"input": f"synth-{n}-hive{parts}", **run_one("synth", f"{tmp}/synth_{n}_dir", f"{tmp}/p{n}")})
    base = rows[1] if len(rows) > 1 else rows[0]
    print(
        f"{'input':<16}{'events':>12}{'users':>10}{'items':>10}{'seconds':>10}{'peak MiB':>10}{'us/event':>10}"
        f"{'B/event':>9}"
    )
    for r in rows:
        r["us_per_event"] = round(1e6 * r["seconds"] / r["events"], 3)
        r["bytes_per_event"] = round((r["peak_rss_mib"] - r["import_rss_mib"]) * 2**20 / r["events"], 1)
        print(
            f"{r['input']:<16}{r['events']:>12,}{r['users']:>10,}{r['items']:>10,}{r['seconds']:>10.2f}"
            f"{r['peak_rss_mib']:>10.0f}{r['us_per_event']:>10.3f}{r['bytes_per_event']:>9.0f}"
        )
    print("B/event: (peak RSS - RSS after imports) / events")
    if len(rows) > 2:
        print(
            f"time per event, largest vs 1M synthetic: {rows[-1]['us_per_event'] / base['us_per_event']:.2f}x "
            "(1.0 = linear)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "prepare", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
