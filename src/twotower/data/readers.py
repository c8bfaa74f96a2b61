"""Read and validate an interaction log (CSV or Parquet) into normalised Arrow event tables, a chunk at a time.

Every check happens here, at the boundary, and every error names the file, the column or row, and the fix.
The output is the small set of columns that :func:`twotower.data.encoding.encode_events` consumes::

    user_id: string, item_id: string, timestamp: int64 (seconds), actions: uint8 bitmask,
    surface: string | null, weight: float32

Actions come from 0/1 columns (``LogSchema.actions``) and from rules on a numeric column
(``LogSchema.action_rules``, :mod:`twotower.data.rules`: ``liked: rating >= 4``), bit by bit in that order.

The column mapping is a :class:`~twotower.data.schemas.LogSchema`; ids follow
:mod:`twotower.data.columns` (text, never numbers), timestamps :mod:`twotower.data.timestamps`. Item and
user tables are read by :mod:`twotower.data.tables`.

Logs are streamed: :func:`iter_log` reads a chunk of rows at a time (Parquet record batches, CSV blocks),
checks and normalises it and yields it, so the raw columns of the whole log are never in memory at once.
Error row numbers count from the start of the file all the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .columns import as_id_strings, as_numbers
from .files import delimiter_for, guarded, is_parquet, open_stream, parquet_files, require
from .rules import ActionRule, evaluate
from .schemas import LogSchema
from .timestamps import parse_timestamps

CHUNK_ROWS = 1 << 19  # log rows per normalised chunk: bounds the memory taken by the raw (string) columns


def _normalise(
    batch: pa.RecordBatch,
    schema: LogSchema,
    rules: list[ActionRule],
    path: Path,
    row0: int,
    later: Iterator[pa.RecordBatch],
) -> pa.Table:
    """One chunk of the raw log -> normalised events (module docstring). ``rules``: ``schema``'s, parsed;
    ``row0``: file row of its first row; ``later``: the batches after it, read only to count bad ids for an
    error message."""
    n = batch.num_rows
    user_col, item_col = schema.user_id, schema.item_id
    user = as_id_strings(batch.column(user_col), user_col, path, row0, (b.column(user_col) for b in later))
    item = as_id_strings(batch.column(item_col), item_col, path, row0, (b.column(item_col) for b in later))
    ts = parse_timestamps(batch.column(schema.timestamp), schema.timestamp, path, row0)
    actions = np.zeros(n, np.uint8)
    for bit, name in enumerate(schema.actions):
        col = batch.column(name)
        vals = (
            as_numbers(col, name, path, row0, "0/1 actions", fill=0.0)
            if not pa.types.is_boolean(col.type)
            else (col.fill_null(False).to_numpy(zero_copy_only=False).astype(np.float64))
        )
        if not np.isin(vals, (0.0, 1.0)).all():
            bad = int(np.flatnonzero(~np.isin(vals, (0.0, 1.0)))[0])
            raise DataError(
                f"{path}: action column {name!r} must be 0/1, found {vals[bad]} at data row {row0 + bad + 1}"
            )
        actions |= (vals.astype(np.uint8) << bit).astype(np.uint8)
    for bit, rule in enumerate(rules, start=len(schema.actions)):
        actions |= evaluate(rule, batch.column(rule.column), path, row0).astype(np.uint8) << np.uint8(bit)
    surface = batch.column(schema.surface).cast(pa.string()) if schema.surface else pa.nulls(n, pa.string())
    if schema.weight:
        weight = as_numbers(batch.column(schema.weight), schema.weight, path, row0, "numeric weights", fill=1.0)
        weight = weight.astype(np.float32)
        if not (np.isfinite(weight).all() and (weight >= 0).all()):
            raise DataError(f"{path}: column {schema.weight!r} must hold finite, non-negative weights")
    else:
        weight = np.ones(n, np.float32)
    return pa.table(
        {"user_id": user, "item_id": item, "timestamp": ts, "actions": actions, "surface": surface, "weight": weight}
    )


def _rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``tables`` regrouped into tables of exactly ``rows`` rows (the last one shorter), in order."""
    pending: list[pa.Table] = []
    size = 0
    for table in tables:
        pending.append(table)
        size += table.num_rows
        while size >= rows:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, rows)
            pending, size = [joined.slice(rows)], size - rows
    if size:
        yield pa.concat_tables(pending)


def iter_log(path: str | Path, schema: LogSchema, chunk_rows: int | None = None) -> Iterator[pa.Table]:
    """Stream an interaction log as normalised event tables (module docstring) of ``chunk_rows`` rows
    (default :data:`CHUNK_ROWS`; the last one shorter), in log order.

    Only a chunk of the raw file is in memory at a time. The checks and messages are :func:`read_log`'s, with
    row numbers counted from the start of the file; a chunk is checked when it is read.
    """
    path = Path(path)
    delimiter = delimiter_for(path, schema.delimiter)
    text = [c for c in (schema.user_id, schema.item_id, schema.surface) if c]
    names, open_batches = open_stream(path, delimiter, "interaction log", text, CHUNK_ROWS)
    require(names, schema.user_id, path, "--user-col / LogSchema.user_id")
    require(names, schema.item_id, path, "--item-col / LogSchema.item_id")
    require(names, schema.timestamp, path, "--time-col")
    rules = schema.rules()  # checked again: the mapping may have been changed since it was built
    for name in schema.actions:
        require(names, name, path, "LogSchema.actions")
    for rule in rules:
        if rule.column not in names:
            raise DataError(
                f"{path}: action rule '{rule}' reads column {rule.column!r}, which the file lacks; the file has "
                f"columns {names}. Fix the column name in the rule (--action / [log.action_rules])"
            )
    if schema.surface:
        require(names, schema.surface, path, "LogSchema.surface")
    if schema.weight:
        require(names, schema.weight, path, "LogSchema.weight")
    batches = guarded(open_batches(schema.columns()), path, delimiter, "interaction log")

    def normalised() -> Iterator[pa.Table]:
        row0 = 0
        for batch in batches:
            yield _normalise(batch, schema, rules, path, row0, batches)
            row0 += batch.num_rows

    yield from _rechunk(normalised(), chunk_rows or CHUNK_ROWS)


def log_rows(path: str | Path) -> int | None:
    """Number of rows of a Parquet log (a file or a directory of them), from the metadata; None for CSV (unknown
    until read)."""
    path = Path(path)
    files = parquet_files(path) if path.is_dir() else [path] if is_parquet(path) and path.is_file() else []
    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None
    except (pa.ArrowInvalid, OSError):
        return None  # iter_log reports the problem


def read_log(path: str | Path, schema: LogSchema) -> pa.Table:
    """Read a whole interaction log into one normalised events table (module docstring)."""
    return pa.concat_tables(list(iter_log(path, schema)))
