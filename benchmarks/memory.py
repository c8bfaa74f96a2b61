"""Peak memory of building and serving an index: how many copies of the vectors each holds (issue 22).

For ``N`` items x 64 (clustered synthetic unit vectors, written as a float32 export with a user sample), each
step in a fresh subprocess, one after the other:

* **build**: ``twotower index build --emb EXPORT --out ROOT --backend B`` (build, recall gate against exact
  search, publish): peak RSS of the process (``ru_maxrss``);
* **serve**: the published index opened as the service opens it (``open_index``), then 2,000 single-query
  searches (k = 100, some with an exclusion list): RSS afterwards, split into anonymous memory (private to the
  process) and file-backed pages (memory-mapped files: shared between worker processes, dropped by the kernel
  under pressure), and the peak.

Beside each: FAISS's own bytes (the size of ``faiss.index``) and one float32 copy of the vectors (N x D x 4),
so "at most one copy above FAISS's own" reads off directly, above each process's floor: for the build, the
interpreter with numpy, torch, faiss and twotower imported; for the serving process, its own RSS just before
it opens the index. ``--src DIR`` runs another source tree's ``twotower`` (e.g. a
``git worktree`` of an earlier commit: the "before" row). Usage::

    python benchmarks/memory.py [--sizes 1000000] [--backends hnsw ivfpq] [--src DIR] [--label after] [--out FILE]
    python benchmarks/memory.py --sizes 10000000 --backends ivfpq --rows-dtype float16 --label 10m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ann import clustered  # benchmarks/ann.py: this directory is on sys.path

REPO = Path(__file__).resolve().parents[1]
DIM = 64

SERVE = r"""
import json, sys, time
import numpy as np
from twotower.index.adaptive import open_index
from twotower.index.publish import current_path
root, n_q = sys.argv[1], int(sys.argv[2])
def memory():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out
before = memory()["VmRSS"]  # this process with its imports, before the index
t0 = time.perf_counter()
index = open_index(current_path(root))
load_s = time.perf_counter() - t0
q = np.load(sys.argv[3])
rng = np.random.default_rng(0)
for i in range(n_q):
    ex = [rng.integers(0, len(index), 20)] if i % 4 == 0 else None
    index.search(q[i % len(q)][None], 100, exclude=ex)
print(json.dumps({"load_s": load_s, "before_index": before, **memory()}))
"""

FLOOR = r"""
import json, numpy, torch, faiss, twotower.index.adaptive
for line in open("/proc/self/status"):
    if line.startswith("VmRSS"):
        print(json.dumps({"VmRSS": int(line.split()[1]) * 1024}))
"""


def write_export(path: Path, n: int) -> None:
    """A float32 embeddings export (as `twotower export` writes it) of ``n`` clustered vectors, written in
    slices through a memory map so this process never holds them all."""
    path.mkdir(parents=True, exist_ok=True)
    emb = np.lib.format.open_memmap(path / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    for lo in range(0, n, 1_000_000):
        hi = min(n, lo + 1_000_000)
        emb[lo:hi] = clustered(hi - lo, DIM, 1000, seed=lo)
    emb.flush()
    del emb
    np.save(path / "ids.npy", np.arange(n, dtype=np.int64))
    np.save(path / "users_sample.npy", clustered(1000, DIM, 1000, seed=10**9))
    manifest = {"kind": "twotower-embeddings", "model_version": "synthetic", "dim": DIM, "count": n,
                "dtype": "float32", "normalized": True, "created_at": "now"}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))


# a CLI command with its own peak RSS on the last line of stderr (RUSAGE_CHILDREN would give the max over every
# child this script has waited for)
WRAP = r"""
import resource, runpy, sys
sys.argv = ["twotower", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("twotower.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
sys.stderr.write(f"\nPEAK_RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}\n")
sys.exit(code)
"""


def run(cmd: list[str], env: dict) -> tuple[str, float, int]:
    """Run ``cmd`` (a CLI command when it starts with "twotower", else argv); (stdout, seconds, peak RSS bytes)."""
    argv = [sys.executable, "-c", WRAP, *cmd[1:]] if cmd[0] == "twotower" else cmd
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    peak = [int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("PEAK_RSS ")]
    return res.stdout, secs, peak[-1] if peak else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--backends", nargs="+", default=["hnsw", "ivfpq"])
    ap.add_argument("--src", help="another source tree to measure (its src/ goes first on PYTHONPATH)")
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rows-dtype", default="float32", choices=["float32", "float16"],
                    help="the index's own rows (IVF-PQ re-scores from them; memory-mapped when served)")  # fmt: skip
    ap.add_argument("--work", help="keep exports here (default: a temporary directory)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory.json"))
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve() / "src") + os.pathsep + env.get("PYTHONPATH", "")
    work = Path(args.work or tempfile.mkdtemp(prefix="memory_"))
    floor = json.loads(run([sys.executable, "-c", FLOOR], env)[0])["VmRSS"]
    print(f"{args.label}: interpreter + numpy/torch/faiss/twotower imported: {floor / 2**20:.0f} MiB", flush=True)
    rows = []
    for n in args.sizes:
        export = work / f"export-{n}"
        if not (export / "manifest.json").is_file():
            write_export(export, n)
        copy = n * DIM * 4
        for backend in args.backends:
            root = work / f"{args.label.replace(' ', '_')}-{backend}-{n}"
            # recall is not what this measures (random clustered queries are hard for a graph); M and the
            # structure's size stay the defaults, a shallower construction search only saves build time
            cmd = ["twotower", "index", "build", "--emb", str(export), "--out", str(root), "--backend", backend,
                   "--no-progress", "--recall-floor", "0", "--hnsw-ef-construction", "64",
                   "--rows-dtype", args.rows_dtype]  # fmt: skip
            _, build_s, build_peak = run(cmd, env)
            current = (root / "CURRENT").read_text().strip()
            faiss_bytes = (root / "versions" / current / "faiss.index").stat().st_size
            serve = run([sys.executable, "-c", SERVE, str(root), str(args.queries), str(export / "users_sample.npy")],
                        env)  # fmt: skip
            s = json.loads(serve[0])
            row = {
                "n": n, "dim": DIM, "backend": backend, "label": args.label, "build_s": round(build_s, 1),
                "rows_dtype": args.rows_dtype, "rows_mib": round(n * DIM * np.dtype(args.rows_dtype).itemsize / 2**20),
                "float32_copy_mib": round(copy / 2**20, 1), "faiss_mib": round(faiss_bytes / 2**20, 1),
                "floor_mib": round(floor / 2**20, 1),
                "build_peak_rss_mib": round(build_peak / 2**20, 1),
                "build_copies_above_faiss": round((build_peak - floor - faiss_bytes) / copy, 2),
                "serve_rss_mib": round(s["VmRSS"] / 2**20, 1), "serve_anon_mib": round(s["RssAnon"] / 2**20, 1),
                "serve_file_mib": round(s["RssFile"] / 2**20, 1), "serve_peak_rss_mib": round(s["VmHWM"] / 2**20, 1),
                "serve_floor_mib": round(s["before_index"] / 2**20, 1),
                "serve_copies_above_faiss": round((s["VmHWM"] - s["before_index"] - faiss_bytes) / copy, 2),
                "serve_load_s": round(s["load_s"], 2),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    done = {(r["label"], r["n"], r["backend"]) for r in rows}  # rows of other labels, sizes, backends stay
    kept = [r for r in doc.get("rows", []) if (r["label"], r["n"], r["backend"]) not in done]
    doc = {"benchmark": "memory", "protocol": "n/a: memory and time, no quality figure", "seeds": [0],
           "rows": kept + rows}  # fmt: skip
    doc["summary"] = {
        f"{r['label'].replace(' ', '_')}_{r['backend']}_{r['n']}_{k}": r[k]
        for r in doc["rows"]
        for k in ("build_peak_rss_mib", "build_copies_above_faiss", "serve_peak_rss_mib", "serve_copies_above_faiss")
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
