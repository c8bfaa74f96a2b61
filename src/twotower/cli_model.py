"""CLI commands that need torch: train, evaluate. Imported lazily so `twotower prepare` starts fast."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
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
    from .train.config import RunConfig
    from .train.run import load_dataset, resume_config
    from .train.trainer import Trainer

    given = cfgmod.load(RunConfig, args.config) if args.config else None
    # A resume trains on with the run's saved config; a given --config may only change what RESUMABLE allows.
    cfg = resume_config(args.out, given) if args.resume else given or RunConfig()
    flags = {"epochs": args.epochs, "device": args.device, "time_budget_s": args.time_budget}
    try:
        cfg.train = dataclasses.replace(cfg.train, **{k: v for k, v in flags.items() if v is not None})
    except cfgmod.ConfigError as exc:  # the range checks run again on the flags' values
        raise cfgmod.ConfigError(f"command line: {exc}") from exc
    data = load_dataset(args.data)
    try:
        trainer = Trainer(data, cfg, args.out, resume=args.resume, overwrite=args.overwrite)
        summary = trainer.fit(progress=not args.no_progress)
    except KeyboardInterrupt:
        print(_interrupted(Path(args.out), args.data), file=sys.stderr)
        return 130
    print(
        f"trained {summary['step']} steps, {summary['epoch']} epochs, {summary['train_seconds']:.0f} s, "
        f"{summary['examples_per_s']:,.0f} examples/s; best valid ndcg@10 {summary['best']:.4f} "
        f"(epoch {summary['best_epoch']}) -> {args.out}"
    )
    return 0


def _interrupted(out: Path, data: str) -> str:
    """One line for Ctrl-C during training: where the last checkpoint is and how to continue."""
    from .model import checkpoint as ckpt

    last = ckpt.resolve(out / "checkpoints" / "last")
    if last is None:
        return f"interrupted before the first checkpoint; nothing to resume, start again with --out {out} --overwrite"
    try:
        state = json.loads((last / "state.json").read_text())
        at = f" (epoch {state['epoch']}, step {state['step']})"
    except (OSError, ValueError, KeyError, TypeError):
        at = ""
    resume = f"twotower train --data {data} --out {out} --resume"
    return f"interrupted; the last checkpoint{at} is {last}; continue with: {resume}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model, evaluate_popularity
    from .features import Featurizer
    from .train.load import load_run as load_model
    from .train.run import check_model_fits, load_dataset, recorded_dataset

    run = Path(args.run)
    model, cfg, version = load_model(run, device=args.device)
    data = load_dataset(recorded_dataset(run, args.data))
    check_model_fits(cfg.model, data)
    scheme = cfg.train.split
    res = {
        "model": evaluate_model(
            model, Featurizer(data, cfg.model), scheme, args.split, device=args.device, progress=True
        ),
        "popularity": evaluate_popularity(data, scheme, args.split),
    }
    rows = {}
    for name, m in res.items():
        for variant in ("filtered", "all"):
            rows[f"{name} [{variant}]"] = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(variant)}
    print(
        f"{args.split} split ({scheme}), {int(res['model']['num_users'])} users, full ranking of "
        f"{data.num_items:,} items; [filtered] = the user's seen items removed; model {version}"
    )
    print(_fmt_table(rows, TABLE_KEYS))
    out = Path(args.out) if args.out else run / f"eval_{args.split}.json"
    out.write_text(json.dumps({"model_version": version, "split": args.split, "scheme": scheme, **res}, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_items

    m = export_items(
        args.run, args.out, dtype=args.dtype, data_dir=args.data, device=args.device, progress=not args.no_progress
    )
    print(
        f"exported {m['count']:,} items x {m['dim']} ({m['dtype']}) at {m['items_per_s']:,.0f} items/s, "
        f"model {m['model_version']} -> {args.out}"
    )
    return 0


# IndexConfig fields `twotower index build` exposes: (field, type, help); unset ones keep IndexConfig's default
INDEX_KNOBS = (
    ("hnsw_m", int, "hnsw: graph degree"),
    ("hnsw_ef_construction", int, "hnsw: build-time beam"),
    ("hnsw_ef_search", int, "hnsw: search beam, the recall knob"),
    ("ivf_nlist", int, "ivfflat/ivfpq: lists; 0 = about 4 sqrt(N), at most N/39"),
    ("ivf_nprobe", int, "ivfflat/ivfpq: lists probed per query, the recall knob"),
    ("pq_m", int, "ivfpq: sub-quantisers; must divide the dimension"),
    ("pq_bits", int, "ivfpq: bits per code; training wants about 39 x 2^bits items"),
    ("refine_factor", int, "ivfpq: PQ candidates re-scored exactly per result"),
)


def add_index_knobs(parser: argparse.ArgumentParser) -> None:
    """--backend, --recall-floor and the INDEX_KNOBS flags, shared by `index build` and `serve-prepare`."""
    from .index.base import IndexConfig

    defaults = IndexConfig()
    parser.add_argument("--backend", default="hnsw", choices=["exact", "hnsw", "ivfflat", "ivfpq"])
    parser.add_argument("--recall-floor", type=float, default=0.95, help="refuse to publish below this recall@100")
    for key, typ, text in INDEX_KNOBS:
        flag, default = "--" + key.replace("_", "-"), getattr(defaults, key)
        parser.add_argument(flag, type=typ, dest=key, help=f"{text} (default {default})")


def index_config_from(args: argparse.Namespace):
    """The IndexConfig the flags of ``add_index_knobs`` describe (unset knobs keep their defaults)."""
    from . import config as cfgmod
    from .index import IndexConfig

    knobs = {key: getattr(args, key) for key, _, _ in INDEX_KNOBS if getattr(args, key) is not None}
    try:
        return IndexConfig(backend=args.backend, **knobs)  # checked in __post_init__: FAISS crashes on some
    except ValueError as exc:
        flag = next((f"--{k.replace('_', '-')}" for k in knobs if k in str(exc)), "an index flag")
        raise cfgmod.ConfigError(f"{flag}: {exc}") from exc


def cmd_index_build(args: argparse.Namespace) -> int:
    from .index.publish import build_and_publish

    cfg = index_config_from(args)
    res = build_and_publish(args.emb, args.out, cfg, recall_floor=args.recall_floor)
    r = res["recall"]
    print(
        f"published {res['version']}: recall@10 {r['recall@10']:.4f}, recall@100 {r['recall@100']:.4f} "
        f"on {res['recall_queries']} real user vectors; build {res['build_seconds']:.1f} s -> {args.out}"
    )
    return 0


def cmd_index_rollback(args: argparse.Namespace) -> int:
    from .index.publish import rollback

    print(f"CURRENT -> {rollback(args.root, args.to)}")
    return 0


def cmd_index_list(args: argparse.Namespace) -> int:
    from .index.base import read_manifest
    from .index.publish import current_version, history

    cur = current_version(args.root)
    for v in history(args.root):
        m = read_manifest(Path(args.root) / "versions" / v, verify=False)
        print(
            f"{'*' if v == cur else ' '} {v}  {m['config']['backend']:<8} {m['count']:>10,} items  "
            f"recall@100 {m['recall']['recall@100']:.4f}  model {m['model_version']}"
        )
    return 0


def _timestamp(text: str | None) -> int | None:
    """Unix seconds or an ISO-8601 date/time (UTC) -> int seconds."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        from datetime import datetime, timezone

        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise SystemExit(f"cannot read time {text!r}: give unix seconds or ISO-8601 like 2000-12-31") from exc
        return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())


def cmd_refresh_states(args: argparse.Namespace) -> int:
    from . import config as cfgmod
    from .refresh import refresh_states

    if args.batch < 1:  # before the store is opened (and created)
        raise cfgmod.ConfigError(f"--batch must be >= 1 users per encoder batch, got {args.batch}; e.g. --batch 512")
    from .store import StoreConfig, open_store

    store = open_store(args.store, StoreConfig(dtype=args.dtype))
    try:
        r = refresh_states(
            args.run,
            store,
            as_of=_timestamp(args.as_of),
            since=_timestamp(args.since),
            data_dir=args.data,
            batch=args.batch,
            device=args.device,
            progress=not args.no_progress,
        )
    finally:
        store.close()
    print(
        f"as of {r.as_of}: {r.stale:,} stale of {r.users_with_history:,} users with history; encoded "
        f"{r.encoded:,} in {r.batches} batches, {r.seconds:.1f} s ({r.users_per_s:,.0f} users/s); "
        f"model {r.model_version} -> {args.store}"
    )
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("refresh-states", help="encode users with new activity into the feature store")
    s.add_argument("--run", required=True, help="run directory of a hybrid model (model.online_head = true)")
    s.add_argument("--store", required=True, help="sqlite:///states.db | redis://host:6379/0")
    s.add_argument("--as-of", help="history cut-off: unix seconds or ISO date (default: after the last event)")
    s.add_argument("--since", help="only users whose last event is at or after this time")
    s.add_argument("--data", help="dataset directory (default: the run's)")
    s.add_argument("--batch", type=int, default=512, help="users per encoder batch and store transaction")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16", "int8"], help="stored precision")
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_refresh_states)

    s = sub.add_parser("train", help="train the two towers on a prepared dataset")
    s.add_argument("--data", required=True, help="dataset directory from `twotower prepare`")
    s.add_argument("--config", help="RunConfig .toml/.json ([model] and [train] tables)")
    s.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv, config.json)")
    again = s.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue OUT from its last checkpoint, with its saved config"
    )
    again.add_argument("--overwrite", action="store_true", help="discard the run already in OUT and start afresh")
    s.add_argument("--epochs", type=int, help="train.epochs (may be raised on --resume)")
    s.add_argument("--device", help="cpu | cuda | cuda:N")
    s.add_argument(
        "--time-budget", type=float, help="stop after this many seconds of training, resumes included (0 = none)"
    )
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="full-corpus evaluation of a run beside the popularity baseline")
    s.add_argument("--run", required=True)
    s.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    s.add_argument("--split", default="test", choices=["valid", "test"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", help="JSON path (default RUN/eval_SPLIT.json)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("export", help="encode every item with the candidate tower")
    s.add_argument("--run", required=True)
    s.add_argument("--out", required=True, help="embeddings directory")
    s.add_argument("--data", help="dataset directory (default: the run's)")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("index", help="build / publish / roll back ANN indexes")
    isub = s.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="build an index, measure recall vs exact, publish atomically")
    b.add_argument("--emb", required=True, help="embeddings directory from `twotower export`")
    b.add_argument("--out", required=True, help="index root (versions/, CURRENT)")
    add_index_knobs(b)
    b.set_defaults(func=cmd_index_build)
    r = isub.add_parser("rollback", help="point CURRENT at the previous (or a named) version")
    r.add_argument("--root", required=True)
    r.add_argument("--to")
    r.set_defaults(func=cmd_index_rollback)
    ls = isub.add_parser("list", help="published versions (* = current)")
    ls.add_argument("--root", required=True)
    ls.set_defaults(func=cmd_index_list)

    from .cli_serve import add_serve_commands

    add_serve_commands(sub)
