"""Events -> compact columns: each id replaced by a dense int32 code in order of first appearance.

Memory stays at about one compact copy of the events. The log arrives a chunk at a time
(:func:`~twotower.data.readers.iter_log`) and each chunk is reduced at once to int32 id codes from running
dictionaries (:class:`_Vocab`) plus the numeric columns (:func:`encode_events`, 23 bytes per event); id
strings are kept once per distinct id. :meth:`EventColumns.sort_by_user_time` then orders the events by
user and time: it adds an int64 key and an int64 order [E] for a moment and reorders the columns one at a
time. Ties in timestamps keep the original log order (a stable sort), so "history before the target"
means earlier in that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import DTypeLike

from ..errors import DataError
from ..layout import MAX_SURFACES


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


def count_duplicates(offsets: np.ndarray, item: np.ndarray, ts: np.ndarray) -> int:
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
