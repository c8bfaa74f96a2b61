"""Chaos suite (issue 17): the faults of an independent probe, repeated at seeded random points.

* Jobs (:mod:`chaos_jobs`): ``prepare``, ``train``, ``export``, ``refresh-states`` and ``index build`` run as
  real processes, SIGKILLed at ``--points`` random points each, then re-run (``train --resume``): no
  leftover, no corrupt artifact, and results equal to an uninterrupted run's.
* Service (:mod:`chaos_serve`): ``--reloads`` reloads alternating between two published versions under a
  steady request stream (failed requests, RSS growth after warm-up), and Redis killed and restarted empty
  mid-load (5xx, time until ``/readyz`` says the store is empty); the schemathesis test file when there is one.

Everything on loopback, on a tiny synthetic log, in a temporary directory. Prints a table (fault, trials,
failures, leftovers, RSS growth) and writes JSON; exits 1 on any failure or leftover. Usage::

    python benchmarks/chaos.py [--points 10] [--reloads 200] [--seed 0] [--out benchmarks/results/chaos.json]
    python benchmarks/chaos.py --points 2 --reloads 20        # a quick pass
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chaos_jobs, chaos_serve, serve_load
from chaos_jobs import JOBS, REPO, build_reference, job_env, job_trials, summarize_jobs  # noqa: E402


def print_table(rows: list[dict]) -> None:
    print(f"\n{'fault':<36}{'trials':>7}{'failures':>10}{'leftovers':>11}{'RSS growth':>12}  note")
    for r in rows:
        counts = f"{r['trials']:>7}{r['failures']:>10}{r['leftovers']:>11}{r['rss_growth']:>12}"
        print(f"{r['fault']:<36}{counts}  {r['note']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=10, help="kills per job")
    p.add_argument("--reloads", type=int, default=200, help="reloads under load")
    p.add_argument("--workers", type=int, default=2, help="service worker processes (the probe's 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["jobs", "serve"], help="run one half")
    p.add_argument("--jobs", default=",".join(JOBS), help=f"jobs to kill, comma-separated (default: {','.join(JOBS)})")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "chaos.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.update(job_env())  # the service and pytest subprocesses too
    sys.path.insert(0, str(REPO / "src"))
    jobs = tuple(j.strip() for j in args.jobs.split(","))
    if not set(jobs) <= set(JOBS):
        p.error(f"--jobs: unknown {sorted(set(jobs) - set(JOBS))}; known: {', '.join(JOBS)}")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="twotower-chaos-"))
    rows: list[dict] = []
    result: dict = {"protocol": "n/a: fault injection", "seeds": {"kill_points": args.seed, "data_and_model": 0}}
    try:
        ref = build_reference(work / "ref")
        result["reference_seconds"] = ref.durations
        if args.only != "serve":
            trials = job_trials(ref, work, args.points, args.seed, jobs)
            rows += summarize_jobs(trials)
            result["kill_trials"] = [asdict(t) for t in trials]
        if args.only != "jobs":
            import chaos_serve

            serve = chaos_serve.run_all(ref, work, args.reloads, args.workers)
            rows += serve.pop("rows")
            result["service"] = serve
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    svc = result.get("service", {})
    result["summary"] = {
        "failures_total": sum(r["failures"] for r in rows),
        "leftovers_total": sum(r["leftovers"] for r in rows),
        "reload_rss_growth": svc.get("reload", {}).get("rss_growth"),
        "reload_failed_requests": svc.get("reload", {}).get("failed_requests"),
        "redis_restart_5xx": svc.get("redis", {}).get("status_5xx"),
        "redis_empty_reported_after_s": svc.get("redis", {}).get("empty_reported_after_s"),
        "schemathesis": svc.get("schemathesis", {}).get("result"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    result["table"] = rows
    result["command"] = "python benchmarks/chaos.py " + " ".join(sys.argv[1:])
    result["cores"] = os.cpu_count()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['summary']['wall_seconds']} s)")
    return 0 if result["summary"]["failures_total"] == 0 and result["summary"]["leftovers_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
