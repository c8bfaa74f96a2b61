"""Deep training on ML-1M: mined hard negatives, explicit negative feedback and the loss family, each beside
the no-config base on the same seeds and budget; dislike@100 on the time split; the family log's margin.

For each seed, one run after the other (never side by side):

* ``base``: ``auto_config`` (what ``twotower train`` does with no config) for ``--budget`` s, leave-last-out;
* ``mine``: ``twotower mine-negatives`` with the base run's best checkpoint, two rank windows (EBR's 101-500
  and a harder 21-100), 8 per example; its wall time is reported (it is not part of any training budget);
* ``hard_101_500`` / ``hard_21_100``: base + those negatives, staged (``hard_start`` 0.5: in-batch + uniform
  for the first half of the budget, then the mined ones join);
* ``feedback``: ``disliked`` events (rating <= 2) are no positives and are negatives of the targets within 20
  events; ``both``: ``hard_101_500`` + ``feedback``;
* ``bpr`` / ``hinge`` / ``nce``: the base with that objective instead of the softmax;
* on the ``time`` split, ``base`` and ``feedback`` again, and ``feedback`` + the item prior
  (``train.dislike_prior`` = each of ``--priors``; the weight is chosen by the validation window: the lowest
  mean valid ``dislike@100`` whose valid ``liked_recall@100`` is at least the base's), scored by
  ``liked_recall@100`` and ``dislike@100`` (:mod:`twotower.evaluate.feedback`) on the valid and test windows
  (``--time-split-only`` runs just these, into their own ``--out``);
* the family log (``twotower synth --family-size 4 --dislike-prob 0.3``): a small model with dislikes as
  positives against the same with negative feedback (validation HR@10).

Every checkpoint is the best by validation NDCG@10; protocol ``strict``; valid and test are both printed and
nothing is chosen on test. Usage::

    python benchmarks/hard_negatives.py --data PREPARED_ML1M [--budget 1200] [--seeds 0 1 2]
        [--variants base hard_101_500 ...] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from runs import train_auto  # benchmarks/runs.py: this directory is on sys.path

REPO = Path(__file__).resolve().parents[1]
KEYS = ("filtered/hr@10", "filtered/ndcg@10", "filtered/hr@100")
WINDOWS = {"hard_101_500": (101, 500), "hard_21_100": (21, 100)}
FEEDBACK = {"negative_actions": ["disliked"], "negative_window": 20}
VARIANTS = {
    "base": {},
    "hard_101_500": {"hard_start": 0.5},
    "hard_21_100": {"hard_start": 0.5},
    "feedback": FEEDBACK,
    "both": {"hard_start": 0.5, **FEEDBACK},
    "bpr": {"loss": "bpr"},
    "hinge": {"loss": "hinge"},
    "nce": {"loss": "nce"},
}


def train_variant(data, budget: float, seed: int, out: Path, overrides: dict, split: str = "loo") -> dict:
    """Train ``auto_config`` + ``overrides``; the best checkpoint's strict valid/test metrics."""
    from twotower.evaluate import evaluate_model

    summary, model, _, version, feat = train_auto(data, budget, seed, out, train=overrides, split=split)
    res = {s: evaluate_model(model, feat, split, s, protocol="strict") for s in ("valid", "test")}
    return {
        "valid": {k: round(res["valid"][k], 4) for k in KEYS},
        "test": {k: round(res["test"][k], 4) for k in KEYS},
        "epochs": summary["epoch"],
        "train_seconds": round(summary["train_seconds"], 1),
        "examples_per_s": round(summary["examples_per_s"], 1),
        "model_version": version,
        "_model": (model, feat),
    }


def family_margin(work: Path, seed: int) -> dict:
    """Validation HR@10 on the family log: dislikes as positives vs as negative feedback (a small model)."""
    from twotower.data import LogSchema, SequenceData
    from twotower.data.config import PrepareConfig
    from twotower.data.prepare import prepare_files
    from twotower.data.synth import generate
    from twotower.evaluate import evaluate_model
    from twotower.features import Featurizer
    from twotower.model import ModelConfig
    from twotower.train.config import RunConfig, TrainConfig
    from twotower.train.load import load_run
    from twotower.train.trainer import Trainer

    def small(**train) -> RunConfig:  # the test suite's small model (tests/conftest.py), 12 epochs
        model = ModelConfig(dim=16, num_heads=2, num_layers=1, max_len=20, item_buckets=1024, author_buckets=64,
                            user_buckets=1024, feature_buckets=64, dropout=0.1)  # fmt: skip
        t = dict(epochs=12, batch_tokens=512, warmup_steps=5, num_uniform=32, eval_users=100, log_every=5,
                 patience=100, lr=3e-3, eval_every=12, seed=seed)  # fmt: skip
        return RunConfig(model=model, train=TrainConfig(**{**t, **train}))

    root = work / "families"
    if not (root / "data" / "manifest.json").exists():
        generate(
            300, 200, 8000, root / "log.parquet", seed=1, topics=10, topic_affinity=0.9, progress=False,
            family_size=4, dislike_prob=0.3,
        )  # fmt: skip
        cfg = PrepareConfig(log=LogSchema(actions=["click", "like", "dislike"], surface="surface"))
        prepare_files(root / "log.parquet", root / "data", cfg)
    data = SequenceData.load(root / "data")
    out = {}
    for name, extra in (("base", {}), ("feedback", {"negative_actions": ["dislike"], "negative_window": 20})):
        cfg = small(**extra)
        Trainer(data, cfg, root / f"{name}-s{seed}", overwrite=True).fit(progress=False)
        model, rc, _ = load_run(root / f"{name}-s{seed}")
        out[name] = round(evaluate_model(model, Featurizer(data, rc.model), "loo", "valid")["filtered/hr@10"], 4)
    return out


def time_split_summary(time_split: list[dict]) -> dict:
    """dislike@100 and liked_recall@100 (test window, means over seeds) of the base, the feedback run and the
    item prior whose weight the validation window chose: the lowest mean valid dislike@100 among the weights
    whose mean valid liked_recall@100 is at least the base's."""

    def mean(name: str, key: str, part: str = "test") -> float:
        return statistics.mean(t[name][part][key] for t in time_split)

    out: dict = {}
    for name in ("base", "feedback"):
        out[f"dislike_at_100_{name}"] = round(mean(name, "dislike@100"), 4)
        out[f"liked_recall_at_100_{name}"] = round(mean(name, "liked_recall@100"), 4)
    base, base_valid_liked = out["dislike_at_100_base"], mean("base", "liked_recall@100", "valid")
    priors = [n for n in time_split[0] if n.startswith("prior_")]
    ok = [n for n in priors if mean(n, "liked_recall@100", "valid") >= base_valid_liked]
    chosen = min(ok or priors, key=lambda n: mean(n, "dislike@100", "valid")) if priors else "feedback"
    d, liked = round(mean(chosen, "dislike@100"), 4), round(mean(chosen, "liked_recall@100"), 4)
    out.update(
        chosen_on_valid=chosen,
        dislike_at_100_chosen=d,
        liked_recall_at_100_chosen=liked,
        dislike_at_100_reduction=round(1 - d / base, 4) if base else None,
        dislike_target_met=bool(base and 1 - d / base >= 0.30 and liked >= out["liked_recall_at_100_base"]),
    )
    return out


def mean_std(values: list[float]) -> list[float]:
    return [round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared ML-1M (actions include `disliked`)")
    p.add_argument("--budget", type=float, default=1200.0, help="training seconds per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-time-split", action="store_true", help="skip the dislike@100 runs")
    p.add_argument("--time-split-only", action="store_true", help="only the dislike@100 runs")
    p.add_argument(
        "--priors",
        type=float,
        nargs="*",
        default=[0.5, 1.0, 2.0],
        help="train.dislike_prior weights tried on the time split (chosen on its validation window)",
    )
    p.add_argument("--work", help="directory for runs and mined files (default: temp)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "hard_negatives.json"))
    args = p.parse_args()

    from twotower.data import SequenceData
    from twotower.evaluate.feedback import feedback_recall
    from twotower.jobs.mine import mine_negatives
    from twotower.train.hard_negatives import MineConfig

    data = SequenceData.load(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="hard-negatives-"))
    t_all = time.time()
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    mining: dict[str, list[float]] = {w: [] for w in WINDOWS}
    time_split: list[dict] = []
    families: list[dict] = []
    result: dict = {}

    def write() -> None:
        summary: dict = {}
        for v, rs in runs.items():
            for split in ("valid", "test"):
                for k in KEYS:
                    vals = [r[split][k] for r in rs]
                    if vals:
                        summary[f"{v}_{split}_{k.split('/')[1].replace('@', '_at_')}"] = mean_std(vals)[0]
        if runs.get("base"):
            base_ndcg = mean_std([r["valid"]["filtered/ndcg@10"] for r in runs["base"]])
            summary["base_valid_ndcg_at_10_std"] = base_ndcg[1]
            others = {v: mean_std([r["valid"]["filtered/ndcg@10"] for r in rs])[0] for v, rs in runs.items() if rs}
            best = max(others, key=others.get)
            summary["best_variant_by_valid_ndcg_at_10"] = best
            summary["best_gain_over_base_valid_ndcg_at_10"] = round(others[best] - base_ndcg[0], 4)
            summary["gain_beyond_seed_spread"] = bool(others[best] - base_ndcg[0] > 2 * base_ndcg[1] > 0)
            summary["examples_per_s_base"] = mean_std([r["examples_per_s"] for r in runs["base"]])[0]
        for v in ("hard_101_500", "hard_21_100"):
            if runs.get(v):
                summary[f"examples_per_s_{v}"] = mean_std([r["examples_per_s"] for r in runs[v]])[0]
        for w, secs in mining.items():
            if secs:
                summary[f"mining_seconds_{w}"] = mean_std(secs)[0]
        if time_split:
            summary.update(time_split_summary(time_split))
        if families:
            fb, ff = (statistics.mean(x[k] for x in families) for k in ("base", "feedback"))
            summary.update(family_hr_at_10_base=fb, family_hr_at_10_feedback=ff, family_margin=round(ff / fb, 3))
        result.update(
            benchmark="hard_negatives",
            protocol="strict",
            seeds=args.seeds,
            budget_s=args.budget,
            data=str(args.data),
            variants={v: VARIANTS[v] for v in args.variants},
            windows=WINDOWS,
            runs={v: [{k: x for k, x in r.items() if k != "_model"} for r in rs] for v, rs in runs.items()},
            mining_seconds=mining,
            time_split=time_split,
            families=families,
            wall_seconds=round(time.time() - t_all, 1),
            summary=summary,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))

    def leave_last_out(seed: int) -> None:
        """The base, the mining jobs and every variant on leave-last-out."""
        base_dir = work / f"base-s{seed}"
        base = train_variant(data, args.budget, seed, base_dir, {})
        print(f"seed {seed} base           valid {base['valid']} test {base['test']}", flush=True)
        if "base" in runs:
            runs["base"].append(base)
        mined = {}
        for w, (lo, hi) in WINDOWS.items():
            if w not in runs and not (w == "hard_101_500" and "both" in runs):
                continue
            t = time.perf_counter()
            cfg = MineConfig(rank_from=lo, rank_to=hi, count=8, seed=seed)
            mine_negatives(base_dir, work / f"mined-{w}-s{seed}", cfg, data, overwrite=True, progress=False)
            mining[w].append(round(time.perf_counter() - t, 1))
            mined[w] = str(work / f"mined-{w}-s{seed}")
        for v in args.variants:
            if v == "base":
                continue
            over = dict(VARIANTS[v])
            if v in WINDOWS:
                over["hard_negatives"] = mined[v]
            if v == "both":
                over["hard_negatives"] = mined["hard_101_500"]
            runs[v].append(train_variant(data, args.budget, seed, work / f"{v}-s{seed}", over))
            r = runs[v][-1]
            print(f"seed {seed} {v:<14} valid {r['valid']} test {r['test']} {r['examples_per_s']:.0f} ex/s", flush=True)
            write()

    def on_time_split(seed: int) -> None:
        """base, feedback and feedback + each prior weight on the time split: liked_recall / dislike@100."""
        pair = {}
        for name, over in [("base", {}), ("feedback", FEEDBACK)] + [
            (f"prior_{w:g}", {**FEEDBACK, "dislike_prior": w}) for w in args.priors
        ]:
            r = train_variant(data, args.budget, seed, work / f"time-{name}-s{seed}", over, split="time")
            model, feat = r["_model"]
            pair[name] = {
                part: {k: round(v, 4) for k, v in feedback_recall(model, feat, data, "time", part=part).items()}
                for part in ("valid", "test")
            }
            pair[name].update(pair[name]["test"])  # the test figures at the top level, as before
            print(f"seed {seed} time split {name}: {pair[name]}", flush=True)
        time_split.append(pair)

    if args.time_split_only:
        runs.clear()
    for seed in args.seeds:
        if not args.time_split_only:
            leave_last_out(seed)
        if not args.no_time_split:
            on_time_split(seed)
        if not args.time_split_only:
            families.append(family_margin(work, seed))
            print(f"seed {seed} family log valid HR@10: {families[-1]}", flush=True)
        write()
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
