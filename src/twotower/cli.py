"""Command line: parse -> config -> call the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import ConfigError, OutputError

log = logging.getLogger("twotower")


def _print_stats(manifest: dict) -> None:
    print(f"dataset    {manifest.get('dataset')}  ({manifest.get('source')})")
    print(f"events     {manifest['num_events']:>12,}")
    print(f"users      {manifest['num_users']:>12,}")
    print(f"items      {manifest['num_items']:>12,}")
    print(f"actions    {', '.join(manifest['actions']) or '-'}")
    for scheme, sizes in manifest["split_sizes"].items():
        print(f"split {scheme:<5}" + "  ".join(f"{k}={v:,}" for k, v in sizes.items()))
    if "seconds" in manifest:
        print(f"took       {manifest['seconds']:.1f} s")


def cmd_prepare(args: argparse.Namespace) -> int:
    from . import config as cfgmod
    from .data import PrepareConfig, prepare_files, prepare_movielens

    cfg = cfgmod.load(PrepareConfig, args.config) if args.config else PrepareConfig()
    if args.num_hashes:
        cfg.num_hashes = args.num_hashes
    if args.dataset == "ml-1m":
        manifest = prepare_movielens(args.out, path=args.path, cfg=cfg)
    else:
        if not args.log:
            raise SystemExit("prepare needs --dataset ml-1m or --log FILE (see `twotower prepare --help`)")
        lg = cfg.log
        for attr, val in (
            ("user_id", args.user_col),
            ("item_id", args.item_col),
            ("timestamp", args.time_col),
            ("surface", args.surface_col),
            ("weight", args.weight_col),
        ):
            if val:
                setattr(lg, attr, val)
        if args.action_cols:
            lg.actions = [c for c in args.action_cols.split(",") if c]
        if args.delimiter:
            lg.delimiter = cfg.items.delimiter = cfg.users.delimiter = args.delimiter
        manifest = prepare_files(args.log, args.out, cfg, items_path=args.items, users_path=args.users)
    _print_stats(manifest)
    print(f"written    {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import generate

    info = generate(args.users, args.items, args.events, args.out, seed=args.seed)
    print(json.dumps(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twotower", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="logs -> time-ordered sequences, splits and hashed ids")
    s.add_argument("--dataset", choices=["ml-1m"], help="built-in dataset")
    s.add_argument("--path", help="ML-1M location: directory with ratings.dat, ml-1m.zip, or recbole files")
    s.add_argument("--log", help="interaction log (.csv/.tsv/.parquet)")
    s.add_argument("--items", help="optional item table")
    s.add_argument("--users", help="optional user table")
    s.add_argument("--config", help="PrepareConfig as .toml/.json (column mappings, hashing)")
    s.add_argument("--user-col"), s.add_argument("--item-col"), s.add_argument("--time-col")
    s.add_argument("--action-cols", help="comma-separated 0/1 columns -> multi-hot actions")
    s.add_argument("--surface-col"), s.add_argument("--weight-col")
    s.add_argument("--delimiter", help="CSV delimiter (default: tab for .tsv/.tab files, else ',')")
    s.add_argument("--num-hashes", type=int)
    s.add_argument("--out", required=True, help="output dataset directory")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("synth", help="write a synthetic log (Zipf items, power-law users)")
    s.add_argument("--users", type=int, required=True)
    s.add_argument("--items", type=int, required=True)
    s.add_argument("--events", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help=".parquet, .csv or .tsv")
    s.set_defaults(func=cmd_synth)

    _add_model_commands(sub)
    return p


def _add_model_commands(sub) -> None:
    """Hook for the training / serving commands (kept separate so importing the CLI stays cheap)."""
    try:
        from .cli_model import add_commands
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures print one ``error:`` line and return 2, Ctrl-C returns 130.

    Errors of our own types (bad input, config, checkpoint, output path, index, store) and OS errors (a
    permission, a full disk) are expected. Anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .errors import DataError

    errors: tuple[type[BaseException], ...] = (DataError, ConfigError, OutputError, OSError)
    if args.command not in ("prepare", "synth"):
        from .errors import CheckpointError, EmbeddingsError, IndexError_, RefreshError, StoreError

        errors += (IndexError_, CheckpointError, StoreError, RefreshError, EmbeddingsError)
    try:
        return int(args.func(args) or 0)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # `train` says where its last checkpoint is; other commands leave nothing half-written
        print(f"interrupted: {args.command} did not finish", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
