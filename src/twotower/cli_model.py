"""CLI commands that need torch: train, evaluate. Imported lazily so `twotower prepare` starts fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _fmt_table(rows: dict[str, dict[str, float]], keys: list[str]) -> str:
    head = f"{'':<28}" + "".join(f"{k:>12}" for k in keys)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name:<28}" + "".join(f"{m.get(k, float('nan')):>12.4f}" for k in keys))
    return "\n".join(lines)


TABLE_KEYS = ["hr@10", "ndcg@10", "hr@50", "hr@100", "hr@200", "mrr"]


def cmd_train(args: argparse.Namespace) -> int:
    from . import config as cfgmod
    from .data import SequenceData
    from .train.loop import RunConfig, Trainer

    cfg = cfgmod.load(RunConfig, args.config) if args.config else RunConfig()
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.device:
        cfg.train.device = args.device
    if args.time_budget is not None:
        cfg.train.time_budget_s = args.time_budget
    data = SequenceData.load(args.data)
    summary = Trainer(data, cfg, args.out, resume=args.resume).fit(progress=not args.no_progress)
    print(f"trained {summary['step']} steps, {summary['epoch']} epochs, {summary['train_seconds']:.0f} s, "
          f"{summary['examples_per_s']:,.0f} examples/s; best valid ndcg@10 {summary['best']:.4f} "
          f"(epoch {summary['best_epoch']}) -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import SequenceData
    from .evaluate import evaluate_model, evaluate_popularity
    from .features import Featurizer
    from .train.loop import load_model

    run = Path(args.run)
    data_dir = args.data
    if data_dir is None:
        if not (run / "data_path.txt").is_file():
            raise SystemExit(f"{run} does not record its dataset; pass --data DIR")
        data_dir = (run / "data_path.txt").read_text().strip()
    model, cfg, version = load_model(run, device=args.device)
    data = SequenceData.load(data_dir)
    scheme = cfg.train.split
    res = {"model": evaluate_model(model, Featurizer(data, cfg.model), scheme, args.split, device=args.device,
                                   progress=True),
           "popularity": evaluate_popularity(data, scheme, args.split)}
    rows = {}
    for name, m in res.items():
        for variant in ("filtered", "all"):
            rows[f"{name} [{variant}]"] = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(variant)}
    print(f"{args.split} split ({scheme}), {int(res['model']['num_users'])} users, full ranking of "
          f"{data.num_items:,} items; [filtered] = the user's seen items removed; model {version}")
    print(_fmt_table(rows, TABLE_KEYS))
    out = Path(args.out) if args.out else run / f"eval_{args.split}.json"
    out.write_text(json.dumps({"model_version": version, "split": args.split, "scheme": scheme, **res}, indent=2))
    print(f"wrote {out}")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("train", help="train the two towers on a prepared dataset")
    s.add_argument("--data", required=True, help="dataset directory from `twotower prepare`")
    s.add_argument("--config", help="RunConfig .toml/.json ([model] and [train] tables)")
    s.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv, config.json)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", help="cpu | cuda | cuda:N")
    s.add_argument("--time-budget", type=float, help="seconds of training before stopping")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="full-corpus evaluation of a run beside the popularity baseline")
    s.add_argument("--run", required=True)
    s.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    s.add_argument("--split", default="test", choices=["valid", "test"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", help="JSON path (default RUN/eval_SPLIT.json)")
    s.set_defaults(func=cmd_evaluate)
