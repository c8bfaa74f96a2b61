"""``twotower prepare`` and ``twotower synth``: the data commands. Neither imports torch."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..errors import ConfigError, UsageError
from .options import given, replace_checked


def declare_prepare(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower prepare``: a built-in dataset or a log (+ item/user tables) and its columns."""
    p.add_argument("--dataset", choices=["ml-1m"], help="built-in dataset")
    p.add_argument("--path", help="ML-1M location: directory with ratings.dat, ml-1m.zip, or recbole files")
    p.add_argument("--log", help="interaction log (.csv/.tsv/.parquet)")
    p.add_argument("--items", help="optional item table")
    p.add_argument("--users", help="optional user table")
    p.add_argument("--config", help="PrepareConfig as .toml/.json (column mappings, hashing)")
    p.add_argument("--user-col")
    p.add_argument("--item-col")
    p.add_argument("--time-col")
    p.add_argument("--action-cols", help="comma-separated 0/1 columns -> multi-hot actions")
    p.add_argument(
        "--action",
        action="append",
        metavar='"NAME: COLUMN OP NUMBER"',
        help='an action from a rating/score column, e.g. "liked: rating >= 4" (op: >= > <= < == !=); repeatable, '
        "after the --action-cols actions; replaces the config's [log.action_rules]",
    )
    p.add_argument("--surface-col")
    p.add_argument("--weight-col")
    p.add_argument("--delimiter", help="CSV delimiter (default: tab for .tsv/.tab files, else ',')")
    p.add_argument("--num-hashes", type=int)
    p.add_argument("--item-text", help="comma-separated free-text columns of the item table (title, description)")
    p.add_argument(
        "--text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="embed the item text with the sentence encoder (needs `pip install 'twotower[text]'`); default: when "
        "--item-text names columns. --text also embeds the built-in ML-1M's titles and genres",
    )
    p.add_argument(
        "--semantic-ids",
        metavar="LxC",
        help="semantic IDs: residual k-means of the item text vectors, L levels of C codes (e.g. 3x64)",
    )
    p.add_argument(
        "--cold-items",
        type=float,
        help="cold-start protocol: hold out this fraction of the items (their only events kept are test targets)",
    )
    p.add_argument("--cold-seed", type=int, help="which items the cold-start protocol holds out (default 0)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line stays)")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare ML-1M or a log file into a dataset directory and print its statistics."""
    from .. import config as cfgmod
    from ..data import PrepareConfig, prepare_files, prepare_movielens

    if args.dataset is None and not args.log:  # before reading a config or any data
        raise UsageError("prepare needs --dataset ml-1m or --log FILE (see `twotower prepare --help`)")
    cfg = cfgmod.load(PrepareConfig, args.config) if args.config else PrepareConfig()
    levels, codes = _semantic_ids(args.semantic_ids)
    content = {
        "num_hashes": args.num_hashes,
        "text": args.text,
        "semantic_id_levels": levels,
        "semantic_id_codes": codes,
        "cold_items": args.cold_items,
        "cold_seed": args.cold_seed,
    }
    cfg = replace_checked(cfg, given(content))
    if args.item_text:
        cfg.items.text = [c for c in args.item_text.split(",") if c]
    if args.dataset == "ml-1m":
        manifest = prepare_movielens(args.out, path=args.path, cfg=cfg)
    else:
        columns = {
            "user_id": args.user_col,
            "item_id": args.item_col,
            "timestamp": args.time_col,
            "surface": args.surface_col,
            "weight": args.weight_col,
        }
        for attr, val in given(columns).items():
            setattr(cfg.log, attr, val)
        actions = {}
        if args.action_cols:
            actions["actions"] = [c for c in args.action_cols.split(",") if c]
        if args.action:
            actions["action_rules"] = action_rules(args.action)
        if actions:
            try:  # re-runs LogSchema's checks: a name used twice, too many actions
                cfg.log = dataclasses.replace(cfg.log, **actions)
            except ConfigError as exc:
                flags = {"actions": "--action-cols", "action_rules": "--action"}
                raise UsageError(f"{' / '.join(flags[k] for k in actions)}: {exc}") from exc
        if args.delimiter:
            cfg.log.delimiter = cfg.items.delimiter = cfg.users.delimiter = args.delimiter
        manifest = prepare_files(
            args.log, args.out, cfg, items_path=args.items, users_path=args.users, progress=not args.no_progress
        )
    print_stats(manifest)
    print(f"written    {args.out}")
    return 0


def _semantic_ids(value: str | None) -> tuple[int | None, int | None]:
    """``--semantic-ids 3x64`` -> (3, 64); UsageError naming the flag for anything else."""
    if value is None:
        return None, None
    try:
        levels, codes = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise UsageError(f"--semantic-ids {value!r}: write levels x codes, e.g. 3x64") from None
    return levels, codes


def action_rules(values: list[str]) -> dict[str, str]:
    """``--action`` values (``"liked: rating >= 4"``) -> ``{name: rule}`` in order; UsageError naming the flag."""
    from ..data.rules import parse_rule, split_action

    rules: dict[str, str] = {}
    for text in values:
        try:
            name, expr = split_action(text)
            parse_rule(name, expr)
        except ConfigError as exc:
            raise UsageError(f"--action: {exc}") from exc
        if name in rules:
            raise UsageError(f"--action: action {name!r} is given twice ({rules[name]!r} and {expr!r}); keep one")
        rules[name] = expr
    return rules


def print_stats(manifest: dict) -> None:
    """The dataset manifest as a short table: counts, actions, split sizes, time taken."""
    print(f"dataset    {manifest.get('dataset')}  ({manifest.get('source')})")
    print(f"events     {manifest['num_events']:>12,}")
    print(f"users      {manifest['num_users']:>12,}")
    print(f"items      {manifest['num_items']:>12,}")
    print(f"actions    {', '.join(manifest['actions']) or '-'}")
    for scheme, sizes in manifest["split_sizes"].items():
        print(f"split {scheme:<5}" + "  ".join(f"{k}={v:,}" for k, v in sizes.items()))
    if "text" in manifest:
        t = manifest["text"]
        rate = f", {t['items_per_s']:,.0f} items/s" if t.get("items_per_s") else ""
        print(f"text       {t['items_with_text']:,} items, {t['encoder']} {t['dim']}-d ({t['cached']:,} cached{rate})")
    if "codebook" in manifest:
        c = manifest["codebook"]
        print(f"sem. ids   {c['levels']}x{c['codes']} codebook {c['version']}, {c['distinct_codes']:,} distinct codes")
    if "cold_items" in manifest:
        print(f"cold items {manifest['cold_items']['count']:,} held out (cold-start protocol)")
    if "seconds" in manifest:
        print(f"took       {manifest['seconds']:.1f} s")


def declare_synth(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower synth``: sizes, seed and output file."""
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=".parquet, .csv or .tsv")
    p.add_argument(
        "--successor-prob", type=float, default=0.0, help="share of events that follow the previous item's successors"
    )
    p.add_argument(
        "--family-size",
        type=int,
        default=1,
        help="items in families of near-duplicates; each user engages one member (adds a `dislike` column)",
    )
    p.add_argument("--dislike-prob", type=float, default=0.0, help="share of events that are a disliked sibling")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic log and print what was generated as one JSON line."""
    from ..data.synth import generate

    info = generate(
        args.users,
        args.items,
        args.events,
        args.out,
        seed=args.seed,
        successor_prob=args.successor_prob,
        family_size=args.family_size,
        dislike_prob=args.dislike_prob,
    )
    print(json.dumps(info))
    return 0
