"""Read and validate interaction logs, item tables and user tables (CSV or Parquet) into Arrow tables.

Every check happens here, at the boundary, and every error names the file, the column or row, and the fix.
The output is a small set of normalised columns that :mod:`twotower.data.prepare` consumes:

* events: ``user_id: string, item_id: string, timestamp: int64 (seconds), actions: uint8 bitmask,
  surface: string | null, weight: float32``
* items: ``item_id: string, author_id: string | null, features: list<string>`` ("field=value" tokens)
* users: ``user_id: string, features: list<string>``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

MAX_ACTIONS = 8  # actions are stored as a uint8 bitmask per event


class DataError(ValueError):
    """Input data is malformed; the message says where and how to fix it."""


@dataclass
class LogSchema:
    """Column mapping of an interaction log. Only the three id/time columns are required."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    actions: list[str] = field(default_factory=list)  # 0/1 (or boolean) columns -> multi-hot actions
    surface: str | None = None  # categorical: where the interaction happened
    weight: str | None = None  # per-event training weight
    delimiter: str = ","  # CSV only


@dataclass
class ItemSchema:
    """Column mapping of an optional item table."""

    item_id: str = "item_id"
    author_id: str | None = None  # creator / author / artist
    features: list[str] = field(default_factory=list)  # single-valued categorical columns
    multi_valued: dict[str, str] = field(default_factory=dict)  # column -> separator, e.g. genres "|"
    delimiter: str = ","


@dataclass
class UserSchema:
    """Column mapping of an optional user table."""

    user_id: str = "user_id"
    features: list[str] = field(default_factory=list)
    delimiter: str = ","


def read_table(path: str | Path, delimiter: str = ",", what: str = "table") -> pa.Table:
    """Read a CSV/TSV or Parquet file, all CSV columns kept as strings or numbers as inferred."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs a header row and at least one row of data")
    try:
        if path.suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{what} file {path} cannot be parsed: {exc}. Is the delimiter {delimiter!r} right?") from exc
    if table.num_rows == 0:
        raise DataError(f"{what} file {path} has a header but no rows; it needs at least one row of data")
    return table


def _column(table: pa.Table, name: str, path: str | Path, option: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(
            f"{path}: missing column {name!r}; the file has columns {table.column_names}. "
            f"Rename the column or map it with {option}"
        )
    return table.column(name)


def _as_id_strings(col: pa.ChunkedArray, name: str, path: str | Path) -> pa.ChunkedArray:
    nulls = col.null_count
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        empty = pc.equal(col, "")
        nulls += pc.sum(empty).as_py() or 0
        col = pc.if_else(empty, None, col)
    if nulls:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{path}: column {name!r} has {nulls} null/empty id(s), first at data row {first + 1}; "
            f"drop those rows or fill the ids"
        )
    return col.cast(pa.string())


def _parse_timestamp(col: pa.ChunkedArray, name: str, path: str | Path) -> np.ndarray:
    """Seconds since the epoch as int64; numbers are taken as seconds, strings as ISO-8601 dates."""
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column {name!r} has an empty timestamp at data row {first + 1}; fill or drop it")
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        vals = col.to_numpy()
        if not np.isfinite(vals).all():
            first = int(np.flatnonzero(~np.isfinite(vals))[0])
            raise DataError(f"{path}: column {name!r} has a non-finite timestamp at data row {first + 1}")
        return vals.astype(np.int64)
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    try:
        return col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    import pandas as pd  # slower path: mixed formats

    parsed = pd.to_datetime(col.to_pandas(), errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {name!r} has an unparsable timestamp {col[first].as_py()!r} at data row {first + 1}; "
            "use seconds since the epoch or ISO-8601 (2024-01-31T12:00:00)"
        )
    return (parsed.astype("int64") // 10**9).to_numpy()


def read_log(path: str | Path, schema: LogSchema) -> pa.Table:
    """Read an interaction log and return the normalised events table (see module docstring)."""
    table = read_table(path, schema.delimiter, "interaction log")
    user = _as_id_strings(_column(table, schema.user_id, path, "--user-col / LogSchema.user_id"), schema.user_id, path)
    item = _as_id_strings(_column(table, schema.item_id, path, "--item-col / LogSchema.item_id"), schema.item_id, path)
    ts = _parse_timestamp(_column(table, schema.timestamp, path, "--time-col"), schema.timestamp, path)
    if len(schema.actions) > MAX_ACTIONS:
        raise DataError(f"at most {MAX_ACTIONS} action columns are supported, got {len(schema.actions)}")
    actions = np.zeros(table.num_rows, np.uint8)
    for bit, name in enumerate(schema.actions):
        col = _column(table, name, path, "LogSchema.actions")
        vals = (
            col.cast(pa.float64()).fill_null(0).to_numpy()
            if not pa.types.is_boolean(col.type)
            else (col.fill_null(False).to_numpy(zero_copy_only=False).astype(np.float64))
        )
        if not np.isin(vals, (0.0, 1.0)).all():
            first = int(np.flatnonzero(~np.isin(vals, (0.0, 1.0)))[0])
            raise DataError(f"{path}: action column {name!r} must be 0/1, found {vals[first]} at data row {first + 1}")
        actions |= (vals.astype(np.uint8) << bit).astype(np.uint8)
    surface = (
        _column(table, schema.surface, path, "LogSchema.surface").cast(pa.string())
        if schema.surface
        else pa.nulls(table.num_rows, pa.string())
    )
    if schema.weight:
        weight = _column(table, schema.weight, path, "LogSchema.weight").cast(pa.float32()).fill_null(1.0).to_numpy()
        if not (np.isfinite(weight).all() and (weight >= 0).all()):
            raise DataError(f"{path}: column {schema.weight!r} must hold finite, non-negative weights")
    else:
        weight = np.ones(table.num_rows, np.float32)
    return pa.table(
        {"user_id": user, "item_id": item, "timestamp": ts, "actions": actions, "surface": surface, "weight": weight}
    )


def _feature_tokens(table: pa.Table, names: list[str], multi: dict[str, str], path: str | Path) -> pa.Array:
    """Per row, the list of ``"field=value"`` tokens of its categorical and multi-valued columns.

    Item and user tables are catalogue-sized (not event-sized), so a per-row comprehension is fine here.
    """
    rows: list[list[str]] = [[] for _ in range(table.num_rows)]
    for name in names:
        values = _column(table, name, path, "features").cast(pa.string()).to_pylist()
        for row, v in zip(rows, values):
            if v not in (None, ""):
                row.append(f"{name}={v}")
    for name, sep in multi.items():
        values = _column(table, name, path, "multi_valued").cast(pa.string()).to_pylist()
        for row, v in zip(rows, values):
            if v:
                row.extend(f"{name}={t}" for t in (v.split() if sep == " " else v.split(sep)) if t)
    return pa.array(rows, pa.list_(pa.string()))


def read_items(path: str | Path, schema: ItemSchema) -> pa.Table:
    """Read an item table: ``item_id, author_id, features`` (duplicate item ids keep the first row)."""
    table = read_table(path, schema.delimiter, "item table")
    item = _as_id_strings(_column(table, schema.item_id, path, "ItemSchema.item_id"), schema.item_id, path)
    author = (
        _column(table, schema.author_id, path, "ItemSchema.author_id").cast(pa.string())
        if schema.author_id
        else pa.nulls(table.num_rows, pa.string())
    )
    feats = _feature_tokens(table, schema.features, schema.multi_valued, path)
    return pa.table({"item_id": item, "author_id": author, "features": feats})


def read_users(path: str | Path, schema: UserSchema) -> pa.Table:
    """Read a user table: ``user_id, features``."""
    table = read_table(path, schema.delimiter, "user table")
    user = _as_id_strings(_column(table, schema.user_id, path, "UserSchema.user_id"), schema.user_id, path)
    feats = _feature_tokens(table, schema.features, {}, path)
    return pa.table({"user_id": user, "features": feats})
