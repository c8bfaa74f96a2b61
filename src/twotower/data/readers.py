"""Read and validate interaction logs, item tables and user tables (CSV or Parquet) into Arrow tables.

Every check happens here, at the boundary, and every error names the file, the column or row, and the fix.
The output is a small set of normalised columns that :mod:`twotower.data.prepare` consumes:

* events: ``user_id: string, item_id: string, timestamp: int64 (seconds), actions: uint8 bitmask,
  surface: string | null, weight: float32``
* items: ``item_id: string, author_id: string | null, features: list<string>`` ("field=value" tokens)
* users: ``user_id: string, features: list<string>``

Logs are streamed: :func:`iter_log` reads a chunk of rows at a time (Parquet record batches, CSV blocks),
checks and normalises it and yields it, so the raw columns of the whole log are never in memory at once.
Error row numbers count from the start of the file all the same. Item and user tables are catalogue-sized
and read whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

MAX_ACTIONS = 8  # actions are stored as a uint8 bitmask per event
CHUNK_ROWS = 1 << 19  # log rows per normalised chunk: bounds the memory taken by the raw (string) columns
CSV_BLOCK_BYTES = 1 << 20  # Arrow's default; a streamed CSV column's type is inferred from its first block


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


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs a header row and at least one row of data")


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def _unparsable(path: Path, what: str, delimiter: str, exc: Exception) -> DataError:
    return DataError(f"{what} file {path} cannot be parsed: {exc}. Is the delimiter {delimiter!r} right?")


def _no_rows(path: Path, what: str) -> DataError:
    return DataError(f"{what} file {path} has a header but no rows; it needs at least one row of data")


def _parse_options(delimiter: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False)


def _open_csv(path: Path, delimiter: str, columns: list[str] | None = None, skip: int = 0) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, skip_rows_after_names=skip),
        parse_options=_parse_options(delimiter),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False, include_columns=columns or []),
    )


def read_table(path: str | Path, delimiter: str = ",", what: str = "table") -> pa.Table:
    """Read a whole CSV/TSV or Parquet file, CSV column types inferred from the whole file."""
    path = Path(path)
    _check_file(path, what)
    try:
        if _is_parquet(path):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path,
                parse_options=_parse_options(delimiter),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unparsable(path, what, delimiter, exc) from exc
    if table.num_rows == 0:
        raise _no_rows(path, what)
    return table


def _csv_batches(path: Path, delimiter: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a CSV file as record batches, one block at a time.

    Arrow's streaming reader fixes each column's type from the first block and fails on a later value that does
    not fit (ids that look numeric for a megabyte, then are not). The file is then reopened after the rows
    already yielded, so types are inferred afresh from the block that failed. A whole-file read would have
    re-converted the earlier blocks with the looser type instead; the normalised values are the same, except for
    non-canonical numbers such as an id ``007`` that was read as ``7`` in an earlier block.
    """
    done, failed_at = 0, -1
    while True:
        try:
            for batch in _open_csv(path, delimiter, columns, skip=done):
                done += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc) or failed_at == done:
                raise
            failed_at = done


def _open_stream(
    path: Path, delimiter: str, what: str
) -> tuple[list[str], Callable[[list[str]], Iterable[pa.RecordBatch]]]:
    """Column names of a CSV or Parquet file, and a function that streams the given columns as record batches
    in file order. Raises :func:`read_table`'s errors for missing, empty, unparsable and header-only files."""
    _check_file(path, what)
    try:
        if _is_parquet(path):
            source = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds a whole row group's pages
            names, rows = source.schema_arrow.names, source.metadata.num_rows

            def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
                return source.iter_batches(batch_size=CHUNK_ROWS, columns=columns)

        else:
            head = _open_csv(path, delimiter)
            names = head.schema.names
            first = next(iter(head), None)
            rows = 0 if first is None else first.num_rows

            def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
                return _csv_batches(path, delimiter, columns)

    except (pa.ArrowInvalid, OSError) as exc:
        raise _unparsable(path, what, delimiter, exc) from exc
    if rows == 0:
        raise _no_rows(path, what)
    return names, batches


def _guarded(batches: Iterable[pa.RecordBatch], path: Path, delimiter: str, what: str) -> Iterator[pa.RecordBatch]:
    """``batches``, with a parse error met half-way through the file turned into a :class:`DataError`."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unparsable(path, what, delimiter, exc) from exc
        yield batch


def _require(names: list[str], name: str, path: str | Path, option: str) -> None:
    if name not in names:
        raise DataError(
            f"{path}: missing column {name!r}; the file has columns {names}. Rename the column or map it with {option}"
        )


def _column(table: pa.Table, name: str, path: str | Path, option: str) -> pa.ChunkedArray:
    _require(table.column_names, name, path, option)
    return table.column(name)


def _bad_ids(col: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """bool mask of null or empty ids, or None when there are none (the usual case, found without a copy)."""
    empty = pc.equal(col, "") if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else None
    if col.null_count == 0 and (empty is None or not pc.any(empty).as_py()):
        return None
    bad = col.is_null()
    if empty is not None:
        bad = pc.or_(bad, empty.fill_null(False))
    return bad.to_numpy(zero_copy_only=False)


def _as_id_strings(
    col: pa.Array | pa.ChunkedArray,
    name: str,
    path: str | Path,
    row0: int = 0,
    later: Iterable[pa.Array | pa.ChunkedArray] = (),
) -> pa.Array | pa.ChunkedArray:
    """Ids as strings. Null or empty ids are an error; its count includes the ``later`` chunks of the column.
    ``row0`` is the file row of ``col``'s first value."""
    bad = _bad_ids(col)
    if bad is not None:
        nulls = int(bad.sum()) + sum(int(b.sum()) for c in later if (b := _bad_ids(c)) is not None)
        raise DataError(
            f"{path}: column {name!r} has {nulls} null/empty id(s), first at data row {row0 + np.argmax(bad) + 1}; "
            f"drop those rows or fill the ids"
        )
    return col.cast(pa.string())


def _parse_timestamp(
    col: pa.Array | pa.ChunkedArray, name: str, path: str | Path, row0: int = 0, first: str | None = None
) -> np.ndarray:
    """Seconds since the epoch as int64; numbers are taken as seconds, strings as ISO-8601 dates.

    Strings Arrow cannot parse go to pandas, whose format guess is made on ``first``, the log's first
    timestamp, as a whole-file parse would; so every chunk is parsed alike. ``row0``: file row of ``col[0]``.
    """
    if col.null_count:
        first_null = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{path}: column {name!r} has an empty timestamp at data row {row0 + first_null + 1}; fill or drop it"
        )
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        vals = col.to_numpy()
        if not np.isfinite(vals).all():
            bad = int(np.flatnonzero(~np.isfinite(vals))[0])
            raise DataError(f"{path}: column {name!r} has a non-finite timestamp at data row {row0 + bad + 1}")
        return vals.astype(np.int64)
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    try:
        return col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    import pandas as pd  # slower path: mixed formats
    from pandas.tseries.api import guess_datetime_format

    text = col.to_pandas()
    fmt = guess_datetime_format(first if first is not None else text.iloc[0]) or "mixed"
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format=fmt)
    bad = parsed.isna().to_numpy()
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {name!r} has an unparsable timestamp {col[at].as_py()!r} at data row {row0 + at + 1}; "
            "use seconds since the epoch or ISO-8601 (2024-01-31T12:00:00)"
        )
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[parsed.dt.unit]  # pandas 3 parses to us
    return (parsed.astype("int64") // per_second).to_numpy()


def _normalise(
    batch: pa.RecordBatch,
    schema: LogSchema,
    path: Path,
    row0: int,
    first_ts: str | None,
    later: Iterator[pa.RecordBatch],
) -> pa.Table:
    """One chunk of the raw log -> normalised events (module docstring). ``row0``: file row of its first row;
    ``later``: the batches after it, read only to count bad ids for an error message."""
    n = batch.num_rows
    user_col, item_col = schema.user_id, schema.item_id
    user = _as_id_strings(batch.column(user_col), user_col, path, row0, (b.column(user_col) for b in later))
    item = _as_id_strings(batch.column(item_col), item_col, path, row0, (b.column(item_col) for b in later))
    ts = _parse_timestamp(batch.column(schema.timestamp), schema.timestamp, path, row0, first_ts)
    actions = np.zeros(n, np.uint8)
    for bit, name in enumerate(schema.actions):
        col = batch.column(name)
        vals = (
            col.cast(pa.float64()).fill_null(0).to_numpy()
            if not pa.types.is_boolean(col.type)
            else (col.fill_null(False).to_numpy(zero_copy_only=False).astype(np.float64))
        )
        if not np.isin(vals, (0.0, 1.0)).all():
            bad = int(np.flatnonzero(~np.isin(vals, (0.0, 1.0)))[0])
            raise DataError(
                f"{path}: action column {name!r} must be 0/1, found {vals[bad]} at data row {row0 + bad + 1}"
            )
        actions |= (vals.astype(np.uint8) << bit).astype(np.uint8)
    surface = batch.column(schema.surface).cast(pa.string()) if schema.surface else pa.nulls(n, pa.string())
    if schema.weight:
        weight = batch.column(schema.weight).cast(pa.float32()).fill_null(1.0).to_numpy()
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
    names, open_batches = _open_stream(path, schema.delimiter, "interaction log")
    _require(names, schema.user_id, path, "--user-col / LogSchema.user_id")
    _require(names, schema.item_id, path, "--item-col / LogSchema.item_id")
    _require(names, schema.timestamp, path, "--time-col")
    if len(schema.actions) > MAX_ACTIONS:
        raise DataError(f"at most {MAX_ACTIONS} action columns are supported, got {len(schema.actions)}")
    for name in schema.actions:
        _require(names, name, path, "LogSchema.actions")
    if schema.surface:
        _require(names, schema.surface, path, "LogSchema.surface")
    if schema.weight:
        _require(names, schema.weight, path, "LogSchema.weight")
    used = [schema.user_id, schema.item_id, schema.timestamp, *schema.actions, schema.surface, schema.weight]
    columns = list(dict.fromkeys(c for c in used if c))
    batches = _guarded(open_batches(columns), path, schema.delimiter, "interaction log")

    def normalised() -> Iterator[pa.Table]:
        row0, first_ts = 0, None
        for batch in batches:
            ts = batch.column(schema.timestamp)
            if first_ts is None and (pa.types.is_string(ts.type) or pa.types.is_large_string(ts.type)) and len(ts):
                first_ts = ts[0].as_py()
            yield _normalise(batch, schema, path, row0, first_ts, batches)
            row0 += batch.num_rows

    yield from _rechunk(normalised(), chunk_rows or CHUNK_ROWS)


def log_rows(path: str | Path) -> int | None:
    """Number of rows of a Parquet log file, from its metadata; None for CSV (unknown until read)."""
    path = Path(path)
    if not (_is_parquet(path) and path.is_file()):
        return None
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        return None  # iter_log reports the problem


def read_log(path: str | Path, schema: LogSchema) -> pa.Table:
    """Read a whole interaction log into one normalised events table (module docstring)."""
    return pa.concat_tables(list(iter_log(path, schema)))


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
