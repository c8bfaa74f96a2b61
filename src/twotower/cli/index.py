"""``twotower index build | upsert | list | rollback``, and the index flags ``serve-prepare`` shares.

``index list`` and ``index rollback`` read manifests and pointers only: no model, no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import flag, given, replace_checked

if TYPE_CHECKING:
    from ..index.base import IndexConfig

#: IndexConfig fields the index flags expose: (field, type, help); an unset flag keeps IndexConfig's default.
INDEX_KNOBS = (
    ("hnsw_m", int, "hnsw: graph degree"),
    ("hnsw_ef_construction", int, "hnsw: build-time beam"),
    ("hnsw_ef_search", int, "hnsw: search beam, the recall knob"),
    ("ivf_nlist", int, "ivfflat/ivfpq: lists; 0 = about 4 sqrt(N), at most N/39"),
    ("ivf_nprobe", int, "ivfflat/ivfpq: lists probed per query, the recall knob"),
    ("pq_m", int, "ivfpq: sub-quantisers; must divide the dimension"),
    ("pq_bits", int, "ivfpq: bits per code; training wants about 39 x 2^bits items"),
    ("refine_factor", int, "ivfpq: PQ candidates re-scored exactly per result"),
    ("rows_dtype", str, "the index's own rows (IVF-PQ re-scoring, filtered-search completion): float32 | float16"),
    (
        "prefix_dim",
        int,
        "adaptive retrieval (Matryoshka models): index the first N dims, re-score at full width; 0 = off",
    ),
    ("shortlist", int, "adaptive retrieval: candidates per result fetched from the prefix index and re-scored"),
)


def add_index_knobs(parser: argparse.ArgumentParser) -> None:
    """--backend, --recall-floor and one flag per INDEX_KNOBS field (``hnsw_m`` -> ``--hnsw-m``)."""
    from ..index.base import IndexConfig

    defaults = IndexConfig()
    parser.add_argument("--backend", default="hnsw", choices=["exact", "hnsw", "ivfflat", "ivfpq"])
    parser.add_argument("--recall-floor", type=float, default=0.95, help="refuse to publish below this recall@100")
    for key, typ, text in INDEX_KNOBS:
        parser.add_argument(flag(key), type=typ, dest=key, help=f"{text} (default {getattr(defaults, key)})")


def index_config_from(args: argparse.Namespace) -> IndexConfig:
    """The IndexConfig the flags of :func:`add_index_knobs` describe; a refused value names its flag.

    IndexConfig checks every knob in ``__post_init__`` (FAISS crashes on some values, e.g. ``--hnsw-m 0``).
    """
    from ..index.base import IndexConfig

    knobs = given({key: getattr(args, key) for key, _, _ in INDEX_KNOBS})
    return replace_checked(IndexConfig(backend=args.backend), knobs)


def declare_index(p: argparse.ArgumentParser) -> None:
    """The ``index`` sub-commands: build, rollback, list."""
    sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build an index, measure recall vs exact, publish atomically")
    b.add_argument("--emb", required=True, help="embeddings directory from `twotower export`")
    b.add_argument("--out", required=True, help="index root (versions/, CURRENT)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line stays)")
    add_index_knobs(b)
    b.set_defaults(func=cmd_index_build)
    u = sub.add_parser(
        "upsert", help="publish new items (a table of their features and text) into the served index, no retraining"
    )
    u.add_argument("--root", required=True, help="artifact root (`twotower serve-prepare --artifacts`)")
    u.add_argument("--items", required=True, help="the new items' table (.csv/.tsv/.parquet)")
    u.add_argument(
        "--config", help="PrepareConfig .toml/.json whose [items] maps the columns (default: the dataset's mapping)"
    )
    u.add_argument("--item-col", help="the item id column")
    u.add_argument("--author-col", help="the author column")
    u.add_argument("--feature-cols", help="comma-separated categorical columns")
    u.add_argument("--multi-valued", action="append", default=[], metavar="COL:SEP", help="e.g. genres:| (repeatable)")
    u.add_argument("--item-text", help="comma-separated text columns")
    u.add_argument("--recall-floor", type=float, default=0.95, help="refuse to publish below this recall@100")
    u.set_defaults(func=cmd_index_upsert)
    r = sub.add_parser("rollback", help="point CURRENT at the previous (or a named) version")
    r.add_argument("--root", required=True)
    r.add_argument("--to")
    r.set_defaults(func=cmd_index_rollback)
    ls = sub.add_parser("list", help="published versions (* = current)")
    ls.add_argument("--root", required=True)
    ls.set_defaults(func=cmd_index_list)


def cmd_index_build(args: argparse.Namespace) -> int:
    """Build an index over an embeddings export, check its recall against exact search, publish it."""
    from ..index.publish import build_and_publish

    cfg = index_config_from(args)
    res = build_and_publish(args.emb, args.out, cfg, recall_floor=args.recall_floor, progress=not args.no_progress)
    r = res["recall"]
    print(
        f"published {res['version']}: recall@10 {r['recall@10']:.4f}, recall@100 {r['recall@100']:.4f} "
        f"on {res['recall_queries']} real user vectors; build {res['build_seconds']:.1f} s -> {args.out}"
    )
    return 0


def cmd_index_upsert(args: argparse.Namespace) -> int:
    """Encode new items with the served model and publish them into a new index version."""
    from .. import config as cfgmod
    from ..data.config import PrepareConfig
    from ..errors import UsageError
    from ..jobs.upsert import upsert_items, upsert_schema

    schema = cfgmod.load(PrepareConfig, args.config).items if args.config else upsert_schema(args.root)
    if args.item_col:
        schema.item_id = args.item_col
    if args.author_col:
        schema.author_id = args.author_col
    if args.feature_cols:
        schema.features = [c for c in args.feature_cols.split(",") if c]
    for spec in args.multi_valued:
        col, sep, value = spec.partition(":")
        if not sep or not col or not value:
            raise UsageError(f"--multi-valued {spec!r}: write COLUMN:SEPARATOR, e.g. genres:|")
        schema.multi_valued[col] = value
    if args.item_text:
        schema.text = [c for c in args.item_text.split(",") if c]
    res = upsert_items(args.root, args.items, schema, recall_floor=args.recall_floor)
    r = res["recall"]
    print(
        f"published {res['version']}: {len(res['items'])} new items (ids {res['ids'][0]}..{res['ids'][-1]}), "
        f"recall@100 {r['recall@100']:.4f}; reload the service (POST /admin/reload) to serve them"
    )
    return 0


def cmd_index_rollback(args: argparse.Namespace) -> int:
    """Point CURRENT at the previous (or the named) published version."""
    from ..index.publish import rollback

    print(f"CURRENT -> {rollback(args.root, args.to)}")
    return 0


def cmd_index_list(args: argparse.Namespace) -> int:
    """One line per published version, ``*`` on the current one."""
    from ..index.base import read_manifest
    from ..index.publish import current_version, history

    cur = current_version(args.root)
    for v in history(args.root):
        m = read_manifest(Path(args.root) / "versions" / v, verify=False)
        ad = m.get("adaptive")
        kind = m["config"]["backend"] + (f" prefix {ad['prefix_dim']}/{ad['dim']}" if ad else "")
        print(
            f"{'*' if v == cur else ' '} {v}  {kind:<8} {m['count']:>10,} items  "
            f"recall@100 {m['recall']['recall@100']:.4f}  model {m['model_version']}"
        )
    return 0
