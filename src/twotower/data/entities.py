"""Per-entity arrays of a dataset: stable hashes of the item, user and author ids and of side-table features.

Ids are hashed, never looked up (:mod:`twotower.hashing`, one salt per namespace from
:mod:`twotower.layout`), so a model maps any id, seen or new, to its buckets the same way. Side tables are
joined on the log's ids: the first row of a duplicated id wins, log ids the table lacks get no features
(logged), table rows with no events are ignored, and a table none of whose ids is in the log is an error
(a mapping mistake). Shapes: ``N`` items, ``U`` users, ``H`` hashes, ``F`` feature slots; 0 is padding.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from ..hashing import multi_hash, token_hash
from ..layout import SALT_AUTHOR, SALT_FEATURE, SALT_ITEM, SALT_USER

log = logging.getLogger(__name__)


def pad_token_hashes(lists: pa.ListArray, width: int, salt: int, what: str) -> np.ndarray:
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


def require_overlap(rows: np.ndarray, table_ids, log_ids: pa.Array, source: str, what: str, option: str) -> None:
    """A side table none of whose ids is in the log is a mapping mistake (wrong column, other dataset)."""
    if len(rows):
        return
    sample = [str(v) for v in table_ids.slice(0, 3).to_pylist()]
    raise DataError(
        f"{source}: none of its {len(table_ids):,} {what} ids is in the log (the table has {sample}, the log "
        f"{[str(v) for v in log_ids.slice(0, 3).to_pylist()]}); map the table's id column ({option}) or check "
        "that the files belong together"
    )


def _rows_in_log(table_ids: pa.ChunkedArray, log_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(code int64 [R], rows int64 [M])``: each table row's code in ``log_ids`` (-1 where absent), and the
    table rows to use, one per log id present (the first row wins for a duplicated id)."""
    code = pc.index_in(table_ids, value_set=log_ids).fill_null(-1).to_numpy().astype(np.int64)
    rows = np.flatnonzero(code >= 0)
    return code, rows[np.unique(code[rows], return_index=True)[1]]


def item_arrays(item_ids: pa.Array, items: pa.Table | None, num_hashes: int, max_features: int, source: str) -> dict:
    """``item_hash`` uint64 [N, H], ``item_author_hash`` uint64 [N, H] (0 where no author) and
    ``item_feat_hash`` uint64 [N, F] for the log's ``item_ids`` [N]; ``items`` is the normalised item table
    (:func:`~twotower.data.tables.read_items`) or None, named ``source`` in errors."""
    num_items, H = len(item_ids), num_hashes
    item_hash = multi_hash(item_ids.to_numpy(zero_copy_only=False), H, SALT_ITEM)
    author = np.zeros((num_items, H), np.uint64)
    feat = np.zeros((num_items, max_features), np.uint64)
    if items is not None:
        code, rows = _rows_in_log(items.column("item_id"), item_ids)
        require_overlap(rows, items.column("item_id"), item_ids, source, "item", "ItemSchema.item_id")
        missing = num_items - len(rows)
        if missing:
            log.warning("%d of %d items in the log are not in the item table; they get no features", missing, num_items)
        authors = items.column("author_id").take(pa.array(rows))
        has_author = authors.is_valid().to_numpy(zero_copy_only=False)
        if has_author.any():
            ah = multi_hash(authors.fill_null("").to_numpy(zero_copy_only=False), H, SALT_AUTHOR)
            author[code[rows[has_author]]] = ah[has_author]
        feat[code[rows]] = pad_token_hashes(
            items.column("features").take(pa.array(rows)), max_features, SALT_FEATURE, "item"
        )
    return {"item_hash": item_hash, "item_author_hash": author, "item_feat_hash": feat}


def user_arrays(user_ids: pa.Array, users: pa.Table | None, num_hashes: int, max_features: int, source: str) -> dict:
    """``user_hash`` uint64 [U, H] and ``user_feat_hash`` uint64 [U, F] for the log's ``user_ids`` [U];
    ``users`` is the normalised user table (:func:`~twotower.data.tables.read_users`) or None."""
    user_hash = multi_hash(user_ids.to_numpy(zero_copy_only=False), num_hashes, SALT_USER)
    feat = np.zeros((len(user_ids), max_features), np.uint64)
    if users is not None:
        code, rows = _rows_in_log(users.column("user_id"), user_ids)
        require_overlap(rows, users.column("user_id"), user_ids, source, "user", "UserSchema.user_id")
        feat[code[rows]] = pad_token_hashes(
            users.column("features").take(pa.array(rows)), max_features, SALT_FEATURE, "user"
        )
    return {"user_hash": user_hash, "user_feat_hash": feat}


def item_texts(item_ids: pa.Array, items: pa.Table | None) -> list[str] | None:
    """The item table's ``text`` of each of the log's ``item_ids`` [N] ("" where an item has no row); None when
    the table has no text column."""
    if items is None or "text" not in items.column_names:
        return None
    code, rows = _rows_in_log(items.column("item_id"), item_ids)
    out = [""] * len(item_ids)
    for i, t in zip(code[rows].tolist(), items.column("text").take(pa.array(rows)).to_pylist()):
        out[i] = t or ""
    return out
