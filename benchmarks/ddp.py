"""Data-parallel training throughput: examples/s of the same run at 1 and at 2 processes (torchrun, gloo).

Each run is ``twotower train`` on a prepared dataset with the no-config defaults for ``--budget`` seconds of
training, one after the other (never side by side); 1 process uses every core, each of N processes
``cores / N`` threads. examples/s counts every rank's targets (``train_summary.json``). The global batch grows
with the world size (each rank takes a token-budgeted batch), so quality at equal wall time is printed too
(validation NDCG@10 of the best checkpoint, strict protocol). On a machine with a GPU, ``--device cuda`` runs
the NCCL path. Usage::

    python benchmarks/ddp.py --data PREPARED [--budget 120] [--nprocs 1 2] [--device cpu] [--out FILE]
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

REPO = Path(__file__).resolve().parents[1]


def run(data: str, out: Path, nproc: int, budget: float, device: str) -> dict:
    cmd = [sys.executable, "-m", "twotower", "train", "--data", data, "--out", str(out), "--overwrite"]
    cmd += ["--time-budget", str(budget), "--device", device, "--no-progress"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    s = json.loads((out / "train_summary.json").read_text())
    return {
        "nproc": nproc,
        "examples_per_s": round(s["examples_per_s"], 1),
        "steps": s["step"],
        "epochs": s["epoch"],
        "train_seconds": round(s["train_seconds"], 1),
        "best_valid_ndcg@10": round(s["best"], 4),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ddp.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ddp_"))
    rows = []
    for n in args.nprocs:
        r = run(args.data, work / f"n{n}", n, args.budget, args.device)
        rows.append(r)
        print(
            f"{n} process(es): {r['examples_per_s']:>10,.0f} examples/s, {r['steps']} steps in {r['train_seconds']} s, "
            f"best valid ndcg@10 {r['best_valid_ndcg@10']:.4f}",
            flush=True,
        )
    base = rows[0]["examples_per_s"]
    summary = {f"examples_per_s_{r['nproc']}proc": r["examples_per_s"] for r in rows}
    summary.update({f"speedup_{r['nproc']}proc": round(r["examples_per_s"] / base, 3) for r in rows[1:]})
    out = {
        "benchmark": "ddp",
        "protocol": "strict",
        "seeds": [0],
        "device": args.device,
        "cores": os.cpu_count(),
        "budget_s": args.budget,
        "dataset": args.data,
        "runs": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("summary:", summary, "->", args.out)


if __name__ == "__main__":
    main()
