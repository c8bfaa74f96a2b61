"""``twotower train``, ``evaluate`` and ``export``: the commands that run the model (they import torch)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UsageError
from .options import given, replace_checked

#: Metrics ``twotower evaluate`` prints, in this order.
TABLE_KEYS = ["hr@10", "ndcg@10", "hr@50", "hr@100", "hr@200", "mrr"]


def declare_train(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower train``: dataset, config, run directory, and the flags a resume may change."""
    p.add_argument("--data", required=True, help="dataset directory from `twotower prepare`")
    p.add_argument(
        "--config",
        help="RunConfig .toml/.json ([model] and [train] tables); without it, defaults scaled to the dataset",
    )
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv, config.json)")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue OUT from its last checkpoint, with its saved config"
    )
    again.add_argument("--overwrite", action="store_true", help="discard the run already in OUT and start afresh")
    p.add_argument("--epochs", type=int, help="train.epochs (may be raised on --resume)")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--time-budget", type=float, help="stop after this many seconds of training, resumes included (0 = none)"
    )
    p.add_argument(
        "--hybrid",
        action="store_true",
        help="without --config: train the hybrid split (cached state + online head), whose served vectors take "
        "the events a request sends; the default unsplit tower serves the user vectors the refresh job cached",
    )
    p.add_argument(
        "--hard-negatives",
        help="train.hard_negatives: a directory from `twotower mine-negatives` (per-example mined negatives)",
    )
    p.add_argument(
        "--hard-start",
        type=float,
        help="train.hard_start: the fraction of the run (time budget, else epochs) after which they join (0..1)",
    )
    p.add_argument("--loss", help="train.loss: softmax (default) | bpr | hinge | nce")
    p.add_argument(
        "--nproc",
        type=int,
        help="data-parallel processes: runs `torchrun --standalone --nproc_per_node N -m twotower train ...` "
        "(gloo on CPU, NCCL on CUDA; in-batch negatives gathered across ranks)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train, on_interrupt=interrupted)


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) a run and print one summary line."""
    from .. import config as cfgmod
    from ..train.config import RunConfig
    from ..train.distributed import shutdown
    from ..train.run import load_dataset, resume_config
    from ..train.trainer import Trainer

    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args)
    if args.hybrid and (args.config or args.resume):
        raise UsageError("--hybrid picks the no-config defaults' tower: with --config or --resume, set "
                         "model.online_head in the config instead")  # fmt: skip
    given_cfg = cfgmod.load(RunConfig, args.config) if args.config else None
    data = load_dataset(args.data)
    # A resume trains on with the run's saved config; a given --config may only change what RESUMABLE allows.
    if args.resume:
        cfg = resume_config(args.out, given_cfg)
    elif given_cfg is not None:
        cfg = given_cfg
    else:  # no config: defaults scaled to this dataset, each choice said
        from ..train.auto import auto_config

        cfg, reasons = auto_config(data, args.time_budget, hybrid=args.hybrid)
        print("no --config: defaults scaled to this dataset (twotower.train.auto):")
        for line in reasons:
            print(f"  {line}")
    flags = {"epochs": args.epochs, "device": args.device, "time_budget_s": args.time_budget}
    if not args.resume:  # what a step computes: fixed once a run has started
        flags.update(hard_negatives=args.hard_negatives, hard_start=args.hard_start, loss=args.loss)
    elif given({"h": args.hard_negatives, "s": args.hard_start, "l": args.loss}):
        raise UsageError("--hard-negatives, --hard-start and --loss change what a step computes: not on --resume")
    cfg.train = replace_checked(cfg.train, given(flags))  # the range checks run again on the flags' values
    trainer = Trainer(data, cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    try:
        summary = trainer.fit(progress=not args.no_progress)
    finally:
        shutdown()
    if not trainer.main:
        return 0
    print(
        f"trained {summary['step']} steps, {summary['epoch']} epochs, {summary['train_seconds']:.0f} s, "
        f"{summary['examples_per_s']:,.0f} examples/s; best valid ndcg@10 {summary['best']:.4f} "
        f"(epoch {summary['best_epoch']}) -> {args.out}"
    )
    return 0


def launch_torchrun(args: argparse.Namespace) -> int:
    """``twotower train --nproc N ...`` -> ``torchrun --standalone --nproc_per_node N -m twotower -- train ...``
    with this command's own arguments (each rank sees WORLD_SIZE and trains instead of launching); its exit
    status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    cmd += ["-m", "twotower", "--", *args.argv]
    print("running:", " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd)


def interrupted(args: argparse.Namespace) -> str:
    """One line for Ctrl-C during training: where the last checkpoint is and how to continue."""
    from ..model import checkpoint as ckpt

    out = Path(args.out)
    last = ckpt.resolve(out / "checkpoints" / "last")
    if last is None:
        return f"interrupted before the first checkpoint; nothing to resume, start again with --out {out} --overwrite"
    try:
        state = json.loads((last / "state.json").read_text())
        at = f" (epoch {state['epoch']}, step {state['step']})"
    except (OSError, ValueError, KeyError, TypeError):
        at = ""
    resume = f"twotower train --data {args.data} --out {out} --resume"
    return f"interrupted; the last checkpoint{at} is {last}; continue with: {resume}"


def declare_evaluate(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower evaluate``."""
    p.add_argument("--run", required=True)
    p.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--protocol",
        default="strict",
        choices=["strict", "request_time"],
        help="strict: nothing of the test event reaches the user vector (default); request_time: the target's "
        "time and surface are the request's (HSTU's convention; differs from strict only for hybrid towers)",
    )
    p.add_argument("--out", help="JSON path (default RUN/eval_SPLIT.json)")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write an HTML + Markdown report with plots (HR@K curves, training curves, segments) to DIR",
    )
    p.add_argument("--index-root", help="with --report: a published index root whose recall and QPS to include")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Rank every item for every user of a split, beside the popularity baseline; print and save the metrics."""
    from ..evaluate import evaluate_model, evaluate_popularity
    from ..features import Featurizer
    from ..train.load import load_run
    from ..train.run import check_model_fits, load_dataset, recorded_dataset

    run = Path(args.run)
    model, cfg, version = load_run(run, device=args.device)
    data = load_dataset(recorded_dataset(run, args.data))
    check_model_fits(cfg.model, data)
    scheme = cfg.train.split
    res = {
        "model": evaluate_model(
            model,
            Featurizer(data, cfg.model),
            scheme,
            args.split,
            device=args.device,
            progress=True,
            protocol=args.protocol,
        ),
        "popularity": evaluate_popularity(data, scheme, args.split),
    }
    rows = {}
    for name, m in res.items():
        for variant in ("filtered", "all"):
            rows[f"{name} [{variant}]"] = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(variant)}
    print(
        f"{args.split} split ({scheme}), protocol {args.protocol}, {int(res['model']['num_users'])} users, full "
        f"ranking of {data.num_items:,} items; [filtered] = the user's seen items removed; model {version}"
    )
    print(format_table(rows, TABLE_KEYS))
    out = Path(args.out) if args.out else run / f"eval_{args.split}.json"
    out.write_text(
        json.dumps(
            {"model_version": version, "protocol": args.protocol, "split": args.split, "scheme": scheme, **res},
            indent=2,
        )
    )
    print(f"wrote {out}")
    if args.report:
        from ..evaluate.report import write_report

        index_manifest = None
        if args.index_root:
            from ..index.base import read_manifest
            from ..index.publish import current_path

            index_manifest = read_manifest(current_path(args.index_root), verify=False)
        feat = Featurizer(data, cfg.model)
        write_report(args.report, model, feat, scheme, args.split, args.protocol, run, index_manifest, version)
        print(f"wrote {Path(args.report) / 'report.html'} (and report.md, report.json, the plots)")
    return 0


def format_table(rows: dict[str, dict[str, float]], keys: list[str]) -> str:
    """Metrics as a fixed-width table: one row per name, one column per key (nan where missing)."""
    lines = [f"{'':<28}" + "".join(f"{k:>12}" for k in keys)]
    for name, m in rows.items():
        lines.append(f"{name:<28}" + "".join(f"{m.get(k, float('nan')):>12.4f}" for k in keys))
    return "\n".join(lines)


def declare_export(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower export``."""
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="embeddings directory")
    p.add_argument("--data", help="dataset directory (default: the run's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--batch", type=int, default=65536, help="items per candidate-tower call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Encode every item of the run's dataset with the candidate tower into an embeddings directory."""
    from ..jobs.export import export_items
    from ..train.distributed import shutdown

    try:
        m = export_items(
            args.run,
            args.out,
            dtype=args.dtype,
            batch=args.batch,
            data_dir=args.data,
            device=args.device,
            progress=not args.no_progress,
        )
    finally:
        shutdown()
    if not m:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(
        f"exported {m['count']:,} items x {m['dim']} ({m['dtype']}) at {m['items_per_s']:,.0f} items/s, "
        f"model {m['model_version']} -> {args.out}"
    )
    return 0


def declare_mine_negatives(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower mine-negatives``."""
    p.add_argument("--run", required=True, help="a trained run: its best checkpoint scores the catalogue")
    p.add_argument("--out", required=True, help="directory for the mined negatives (train.hard_negatives = OUT)")
    p.add_argument("--data", help="dataset directory (default: the run's)")
    p.add_argument("--from", dest="rank_from", type=int, default=101, help="first rank of the window (1-based)")
    p.add_argument("--to", dest="rank_to", type=int, default=500, help="last rank of the window (inclusive)")
    p.add_argument("--count", type=int, default=8, help="negatives drawn per training example")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace OUT's mined negatives or unfinished parts")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_mine_negatives)


def cmd_mine_negatives(args: argparse.Namespace) -> int:
    """Mine hard negatives for every training example of RUN's dataset (resumes an unfinished OUT)."""
    from ..jobs.mine import mine_negatives
    from ..train.hard_negatives import MineConfig
    from ..train.run import load_dataset, recorded_dataset

    cfg = MineConfig(rank_from=args.rank_from, rank_to=args.rank_to, count=args.count, seed=args.seed)
    data = load_dataset(recorded_dataset(Path(args.run), args.data))
    m = mine_negatives(args.run, args.out, cfg, data, overwrite=args.overwrite, progress=not args.no_progress)
    print(
        f"mined {m['examples']:,} training examples x {cfg.count} negatives from ranks {cfg.rank_from}-"
        f"{cfg.rank_to} ({100 * m['filled']:.0f} % filled) with model {m['model_version']} in {m['seconds']:.0f} s"
        f" -> {args.out}\ntrain with them: twotower train ... --hard-negatives {args.out} [--hard-start 0.5]"
    )
    return 0


def declare_train_ranker(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower train-ranker``."""
    p.add_argument("--run", required=True, help="the retriever run whose candidates the ranker re-scores")
    p.add_argument(
        "--mined", required=True, help="its candidates: `twotower mine-negatives --run RUN --from 1 --to 100`"
    )
    p.add_argument("--out", required=True, help="ranker directory")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128, help="examples per step")
    p.add_argument("--random", type=int, default=4, help="uniform random candidates per example")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--history", type=int, default=50, help="the user's last events the ranker reads")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--no-prior", action="store_true", help="score candidates from scratch, without the retriever's score"
    )
    p.add_argument(
        "--warm-start", action="store_true", help="start the history tokens and blocks from the retriever's encoder"
    )
    p.add_argument("--time-budget", type=float, default=0.0, help="training seconds (0 = the steps decide)")
    p.add_argument("--shortlist", type=int, default=100, help="K': retrieved candidates re-ranked at evaluation")
    p.add_argument("--eval-users", type=int, default=2000, help="users scored on valid and test (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200, help="steps between resumable checkpoints (OUT/resume)")
    p.add_argument(
        "--fresh", action="store_true", help="drop an interrupted training's OUT/resume instead of continuing it"
    )
    p.set_defaults(func=cmd_train_ranker)


def cmd_train_ranker(args: argparse.Namespace) -> int:
    """Train a ranker on the retriever's candidates; print retrieval vs retrieval + rerank (valid, test)."""
    from ..train.ranker import RankerConfig, rerank_metrics, train_ranker
    from ..train.run import load_dataset, recorded_dataset

    cfg = RankerConfig(random=args.random, num_layers=args.layers, steps=args.steps, batch=args.batch,
                       time_budget_s=args.time_budget, seed=args.seed, history=args.history, lr=args.lr,
                       prior=not args.no_prior, warm_start=args.warm_start, save_every=args.save_every)  # fmt: skip
    data = load_dataset(recorded_dataset(Path(args.run), None))
    s = train_ranker(args.run, args.mined, args.out, cfg, data, resume=not args.fresh)
    print(
        f"ranker {s['ranker_version']} for retriever {s['retriever_version']}: {s['step']} steps, "
        f"{s['train_seconds']:.0f} s, {s['candidates']} candidates per example, loss {s['loss']:.4f} -> {args.out}"
    )
    users = args.eval_users or None
    for split in ("valid", "test"):
        m = rerank_metrics(args.run, args.out, split, args.shortlist, users, data)
        r, k = m["retrieval"], m["rerank"]
        print(
            f"{split} (strict, K'={args.shortlist}): retrieval HR@10 {r['hr@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} | "
            f"+ rerank HR@10 {k['hr@10']:.4f} NDCG@10 {k['ndcg@10']:.4f}"
        )
    return 0
