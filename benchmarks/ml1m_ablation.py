"""Ablations on ML-1M: one option changed at a time from the default config, on a short fixed schedule.

Each variant trains ``--epochs`` epochs (no early stopping) and is scored on the validation and the test
split, seen items removed, protocol ``strict``. Variants are ranked, and a choice among them may only be made,
on **validation**; test figures are printed beside them for the record. Variants run ``--parallel`` at a time,
one thread each (their examples/s are therefore under contention). Usage::

    python benchmarks/ml1m_ablation.py [--epochs 6] [--parallel 2] [--only base logq_streaming ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "logq_streaming": ["train.logq=streaming"],
    "logq_exact": ["train.logq=exact"],
    "in_batch_only": ["train.negatives=in_batch"],
    "uniform_only_1024": ["train.negatives=uniform", "train.logq=streaming"],
    "positions_none": ["model.positions=none"],
    "positions_time": ["model.positions=learned+time"],
    "bidirectional": ["model.causal=false"],
    "pooling_mean": ["model.pooling=mean"],
    "no_user_token": ["model.user_token=false"],
    "temperature_0.1": ["train.temperature=0.1"],
    "temperature_learned": ["train.learn_temperature=true"],
    "max_len_50": ["model.max_len=50"],
    "batch_16k": ["train.batch_tokens=16384"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/ml1m.toml")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="benchmarks/results/ml1m_ablation.json")
    args = ap.parse_args()
    from twotower.data import prepare_movielens

    names = args.only or list(VARIANTS)
    results: dict[str, dict] = {}
    here = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        prepare_movielens(data)
        pending = list(names)
        running: list[tuple[str, subprocess.Popen, str]] = []
        while pending or running:
            while pending and len(running) < args.parallel:
                name = pending.pop(0)
                out = f"{tmp}/{name}.json"
                sets = [
                    f"train.epochs={args.epochs}",
                    f"train.patience={args.epochs}",
                    "train.threads=1",
                    "train.time_budget_s=0",
                    *VARIANTS[name],
                ]
                cmd = [
                    sys.executable,
                    str(here / "ml1m_quality.py"),
                    "--config",
                    args.config,
                    "--data",
                    data,
                    "--out",
                    out,
                ] + [a for s in sets for a in ("--set", s)]
                log = open(f"{tmp}/{name}.log", "w")  # a file, not a pipe: progress bars would fill a pipe
                running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out))
            time.sleep(2)
            for item in list(running):
                name, proc, out = item
                if proc.poll() is not None:
                    running.remove(item)
                    if proc.returncode:
                        print(f"{name}: failed\n{Path(tmp, name + '.log').read_text()[-2000:]}")
                        continue
                    results[name] = json.loads(Path(out).read_text())
                    r = results[name]
                    print(
                        f"{name:<22}{r['valid_ndcg@10']:>10.4f}{r['ndcg@10']:>9.4f}"
                        f"{r['train_examples_per_s']:>10.0f}  {' '.join(VARIANTS[name]) or '(default)'}",
                        flush=True,
                    )
    ranked = sorted(results, key=lambda n: -results[n]["valid_ndcg@10"])
    print("\nranked by validation NDCG@10 (test beside it, never used to choose); protocol strict")
    print(f"{'variant':<22}{'valid HR@10':>12}{'valid NDCG':>11}{'test HR@10':>11}{'test NDCG':>10}{'ex/s(1t)':>10}")
    for name in ranked:
        r = results[name]
        print(
            f"{name:<22}{r['valid_hr@10']:>12.4f}{r['valid_ndcg@10']:>11.4f}{r['hr@10']:>11.4f}{r['ndcg@10']:>10.4f}"
            f"{r['train_examples_per_s']:>10.0f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "benchmark": "ml1m_ablation",
                "protocol": "strict",
                "seeds": [0],
                "selected_on": "valid",
                "epochs": args.epochs,
                "ranking_by_valid_ndcg10": ranked,
                "variants": {n: {"overrides": VARIANTS[n], **results[n]} for n in results},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
