"""Read and validate interaction logs, item tables and user tables (CSV or Parquet) into Arrow tables.

Every check happens here, at the boundary, and every error names the file, the column or row, and the fix.
The output is a small set of normalised columns that :mod:`twotower.data.prepare` consumes:

* events: ``user_id: string, item_id: string, timestamp: int64 (seconds), actions: uint8 bitmask,
  surface: string | null, weight: float32``
* items: ``item_id: string, author_id: string | null, features: list<string>`` ("field=value" tokens)
* users: ``user_id: string, features: list<string>``

Ids (and authors, surfaces and side-table features) are read from CSV as text, never as numbers, so ``007``,
``7`` and ``7.0`` stay three ids. Parquet ids must be strings or integers. Timestamps are seconds since the
epoch (numbers or digit strings) or ISO-8601 strings; finer units are truncated to the second, and values
outside :data:`MIN_YEAR`..:data:`MAX_YEAR` are an error (a millisecond epoch read as seconds lands there).

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

from ..errors import DataError
from ..layout import feature_token

MAX_ACTIONS = 8  # actions are stored as a uint8 bitmask per event
CHUNK_ROWS = 1 << 19  # log rows per normalised chunk: bounds the memory taken by the raw (string) columns
CSV_BLOCK_BYTES = 1 << 20  # Arrow's default; a streamed CSV column's type is inferred from its first block
MIN_YEAR, MAX_YEAR = 1900, 2199  # timestamps outside are taken for a unit mistake
_MIN_SECONDS, _END_SECONDS = -2_208_988_800, 7_258_118_400  # 1900-01-01 and 2200-01-01, UTC


@dataclass
class LogSchema:
    """Column mapping of an interaction log. Only the three id/time columns are required."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    actions: list[str] = field(default_factory=list)  # 0/1 (or boolean) columns -> multi-hot actions
    surface: str | None = None  # categorical: where the interaction happened
    weight: str | None = None  # per-event training weight
    delimiter: str | None = None  # CSV only; None: tab for .tsv/.tab files, else ","


@dataclass
class ItemSchema:
    """Column mapping of an optional item table."""

    item_id: str = "item_id"
    author_id: str | None = None  # creator / author / artist
    features: list[str] = field(default_factory=list)  # single-valued categorical columns
    multi_valued: dict[str, str] = field(default_factory=dict)  # column -> separator, e.g. genres "|"
    delimiter: str | None = None  # None: tab for .tsv/.tab files, else ","


@dataclass
class UserSchema:
    """Column mapping of an optional user table."""

    user_id: str = "user_id"
    features: list[str] = field(default_factory=list)
    delimiter: str | None = None  # None: tab for .tsv/.tab files, else ","


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory; give the path of a CSV/TSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs a header row and at least one row of data")


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def _delimiter(path: Path, given: str | None) -> str:
    """``given``, else tab for a ``.tsv`` / ``.tab`` file (compressed or not), else a comma."""
    if given is not None:
        return given
    suffixes = [s for s in path.suffixes if s.lower() not in _COMPRESSED]
    return "\t" if suffixes and suffixes[-1].lower() in (".tsv", ".tab") else ","


def _unparsable(path: Path, what: str, delimiter: str, exc: Exception) -> DataError:
    reason = str(exc).strip().rstrip(".")
    if _is_parquet(path):
        return DataError(
            f"{what} file {path} is not a readable Parquet file: {reason}. Rewrite it as Parquet, or give a CSV "
            "file a .csv / .tsv name"
        )
    return DataError(f"{what} file {path} cannot be parsed: {reason}. Is the delimiter {delimiter!r} right?")


def _no_rows(path: Path, what: str) -> DataError:
    return DataError(f"{what} file {path} has a header but no rows; it needs at least one row of data")


def _parse_options(delimiter: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False)


def _convert_options(text: Iterable[str], columns: list[str] | None = None) -> pacsv.ConvertOptions:
    """CSV conversion with the ``text`` columns kept as strings (ids must not be read as numbers)."""
    return pacsv.ConvertOptions(
        strings_can_be_null=False,
        include_columns=columns or [],
        column_types={name: pa.string() for name in text},
    )


def _open_csv(
    path: Path, delimiter: str, columns: list[str] | None = None, skip: int = 0, text: Iterable[str] = ()
) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, skip_rows_after_names=skip),
        parse_options=_parse_options(delimiter),
        convert_options=_convert_options(text, columns),
    )


def read_table(
    path: str | Path, delimiter: str | None = None, what: str = "table", text: Iterable[str] = ()
) -> pa.Table:
    """Read a whole CSV/TSV or Parquet file. CSV column types are inferred from the whole file, except for the
    ``text`` columns, which are read as strings. ``delimiter`` None: by the file name (:func:`_delimiter`)."""
    path = Path(path)
    _check_file(path, what)
    delimiter = _delimiter(path, delimiter)
    try:
        if _is_parquet(path):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path, parse_options=_parse_options(delimiter), convert_options=_convert_options(text)
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unparsable(path, what, delimiter, exc) from exc
    if table.num_rows == 0:
        raise _no_rows(path, what)
    return table


def _csv_batches(path: Path, delimiter: str, columns: list[str], text: Iterable[str]) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a CSV file as record batches, one block at a time; ``text`` columns as strings.

    Arrow's streaming reader fixes each inferred column's type from the first block and fails on a later value
    that does not fit (timestamps that are numbers for a megabyte, then ISO dates). The file is then reopened
    after the rows already yielded, so types are inferred afresh from the block that failed. The normalised
    values do not depend on the type a block was read with; ids, read as text, are never inferred.
    """
    done, failed_at = 0, -1
    while True:
        try:
            for batch in _open_csv(path, delimiter, columns, skip=done, text=text):
                done += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc) or failed_at == done:
                raise
            failed_at = done


def _open_stream(
    path: Path, delimiter: str, what: str, text: Iterable[str]
) -> tuple[list[str], Callable[[list[str]], Iterable[pa.RecordBatch]]]:
    """Column names of a CSV or Parquet file, and a function that streams the given columns as record batches
    in file order (CSV ``text`` columns as strings). Raises :func:`read_table`'s errors for missing, empty,
    unparsable and header-only files."""
    _check_file(path, what)
    try:
        if _is_parquet(path):
            source = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds a whole row group's pages
            names, rows = source.schema_arrow.names, source.metadata.num_rows

            def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
                return source.iter_batches(batch_size=CHUNK_ROWS, columns=columns)

        else:
            head = _open_csv(path, delimiter, text=text)
            names = head.schema.names
            first = next(iter(head), None)
            rows = 0 if first is None else first.num_rows

            def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
                return _csv_batches(path, delimiter, columns, text)

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


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def _as_id_strings(
    col: pa.Array | pa.ChunkedArray,
    name: str,
    path: str | Path,
    row0: int = 0,
    later: Iterable[pa.Array | pa.ChunkedArray] = (),
) -> pa.Array | pa.ChunkedArray:
    """Ids as strings. Null or empty ids are an error; its count includes the ``later`` chunks of the column.
    ``row0`` is the file row of ``col``'s first value.

    Only text and integer columns are ids: a float column (what pandas makes of integer ids with a missing
    value) would merge ``7`` and ``7.0`` and turn long ids into rounded numbers.
    """
    if pa.types.is_dictionary(col.type):  # pandas categoricals
        col = col.cast(col.type.value_type)
    dtype = col.type
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        raise DataError(
            f"{path}: id column {name!r} holds {dtype} numbers; ids must be strings or integers (a float id column "
            f"rounds long ids and merges 7 and 7.0). Write it as strings or int64 (pandas: "
            f"df[{name!r}].astype('Int64') or .astype(str)) after dropping rows with a missing id"
        )
    if not (_is_text(dtype) or pa.types.is_integer(dtype) or pa.types.is_binary(dtype)):
        raise DataError(f"{path}: id column {name!r} has type {col.type}; ids must be strings or integers")
    bad = _bad_ids(col)
    if bad is not None:
        nulls = int(bad.sum()) + sum(int(b.sum()) for c in later if (b := _bad_ids(c)) is not None)
        raise DataError(
            f"{path}: column {name!r} has {nulls} null/empty id(s), first at data row {row0 + np.argmax(bad) + 1}; "
            f"drop those rows or fill the ids"
        )
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid as exc:  # binary that is not UTF-8
        raise DataError(f"{path}: id column {name!r} is not valid UTF-8 text ({exc}); write the ids as text") from exc


def _out_of_range(seconds: np.ndarray) -> np.ndarray:
    return (seconds < _MIN_SECONDS) | (seconds >= _END_SECONDS)


def _check_range(seconds: np.ndarray, raw: np.ndarray | None, name: str, path: str | Path, row0: int) -> None:
    """Timestamps must fall in years MIN_YEAR..MAX_YEAR; a value that fits once divided by 1e3, 1e6 or 1e9 is
    named as an epoch in that unit. ``raw``: the numbers as written (for the message), None for dates."""
    bad = _out_of_range(seconds)
    if not bad.any():
        return
    at = int(np.flatnonzero(bad)[0])
    value = seconds[at] if raw is None else raw[at]
    hint = "check the column mapping (--time-col) and the values"
    if raw is not None:
        for div, unit in ((10**3, "milliseconds"), (10**6, "microseconds"), (10**9, "nanoseconds")):
            if not _out_of_range(np.array([value / div])).any():
                hint = f"it looks like {unit} since the epoch: divide the column by {div:,}"
                break
    shown = f"{value:g}" if isinstance(value, float | np.floating) else str(value)
    raise DataError(
        f"{path}: column {name!r} has timestamp {shown} at data row {row0 + at + 1}, which as seconds since the "
        f"epoch is outside the years {MIN_YEAR}..{MAX_YEAR}; {hint}"
    )


def _numbers_to_seconds(vals: np.ndarray, name: str, path: str | Path, row0: int) -> np.ndarray:
    """Epoch seconds as written (int or float [R]) -> int64 [R]; fractions are dropped (floored)."""
    if vals.dtype.kind == "f":
        if not np.isfinite(vals).all():
            bad = int(np.flatnonzero(~np.isfinite(vals))[0])
            raise DataError(f"{path}: column {name!r} has a non-finite timestamp at data row {row0 + bad + 1}")
        _check_range(vals, vals, name, path, row0)  # before the cast: 1e30 does not fit in int64
        return np.floor(vals).astype(np.int64)
    _check_range(vals, vals, name, path, row0)
    return vals.astype(np.int64)


_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_EPOCH_NUMBER = r"^\s*[+-]?[0-9]+(\.[0-9]*)?\s*$"  # a digit string is seconds since the epoch


def _strings_to_seconds(col: pa.Array | pa.ChunkedArray, name: str, path: str | Path, row0: int) -> np.ndarray:
    """Digit strings (signed, a fraction allowed) are epoch seconds; every other string must be ISO-8601
    (``2024-01-31``, ``2024-01-31 12:00:00``, ``2024-01-31T12:00:00.5+01:00``; no zone = UTC). Each value is
    judged on its own, so epochs and ISO variants may be mixed in one column."""
    numeric = pc.match_substring_regex(col, _EPOCH_NUMBER).to_numpy(zero_copy_only=False)
    out = np.zeros(len(col), np.int64)
    if numeric.any():
        where = np.flatnonzero(numeric)
        raw = pc.utf8_trim_whitespace(col.take(pa.array(where))).cast(pa.float64()).to_numpy()
        seconds = np.floor(raw)
        bad = _out_of_range(seconds)
        if bad.any():
            _check_range(seconds[bad], raw[bad], name, path, row0 + int(where[np.flatnonzero(bad)[0]]))
        out[where] = seconds.astype(np.int64)
    if numeric.all():
        return out
    where = np.flatnonzero(~numeric)
    text = col.take(pa.array(where)) if numeric.any() else col
    try:  # Arrow parses plain ISO dates fast; zones, mixed variants and the rest go to pandas
        seconds = text.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy() // _PER_SECOND["us"]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import pandas as pd

        stamps = pd.to_datetime(text.to_pandas(), format="ISO8601", utc=True, errors="coerce")
        failed = stamps.isna().to_numpy()
        if failed.any():
            at = int(where[np.flatnonzero(failed)[0]])
            raise DataError(
                f"{path}: column {name!r} has an unparsable timestamp {col[at].as_py()!r} at data row "
                f"{row0 + at + 1}; use seconds since the epoch or ISO-8601 (2024-01-31T12:00:00)"
            ) from None
        seconds = stamps.astype("int64").to_numpy() // _PER_SECOND[stamps.dt.unit]  # pandas 3 parses to us
    bad = _out_of_range(seconds)
    if bad.any():
        _check_range(seconds[bad], None, name, path, row0 + int(where[np.flatnonzero(bad)[0]]))
    out[where] = seconds
    return out


def _parse_timestamp(col: pa.Array | pa.ChunkedArray, name: str, path: str | Path, row0: int = 0) -> np.ndarray:
    """Seconds since the epoch, int64 [R]. Numbers are seconds; strings are epoch seconds or ISO-8601 dates
    (:func:`_strings_to_seconds`); timestamp and date columns keep their instant. Anything finer than a second
    is truncated (floored) to the second. ``row0``: file row of ``col[0]``."""
    if col.null_count:
        first_null = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{path}: column {name!r} has an empty timestamp at data row {row0 + first_null + 1}; fill or drop it"
        )
    dtype = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_dictionary(col.type):
        col = col.cast(dtype)
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return _numbers_to_seconds(col.to_numpy(), name, path, row0)
    if pa.types.is_decimal(dtype):
        return _numbers_to_seconds(col.cast(pa.float64()).to_numpy(), name, path, row0)
    if pa.types.is_timestamp(dtype):  # the int64 of a zoned timestamp is UTC already
        seconds = col.cast(pa.int64()).to_numpy() // _PER_SECOND[dtype.unit]
        _check_range(seconds, None, name, path, row0)
        return seconds
    if pa.types.is_date32(dtype):
        seconds = col.cast(pa.int32()).to_numpy().astype(np.int64) * 86_400
        _check_range(seconds, None, name, path, row0)
        return seconds
    if pa.types.is_date64(dtype):
        seconds = col.cast(pa.int64()).to_numpy() // 1000
        _check_range(seconds, None, name, path, row0)
        return seconds
    if _is_text(dtype):
        return _strings_to_seconds(col, name, path, row0)
    raise DataError(
        f"{path}: column {name!r} has type {col.type}, not a timestamp; use seconds since the epoch or "
        "ISO-8601 strings, or map another column with --time-col"
    )


def _as_numbers(col: pa.Array, name: str, path: Path, row0: int, want: str, fill: float) -> np.ndarray:
    """A numeric (or numeric-text) column -> float64 [R] with ``fill`` for empty cells; text that is no number
    is a DataError naming the first such value and its data row (``want`` says what the column must hold)."""
    try:
        return col.cast(pa.float64()).fill_null(fill).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(col.to_pylist()):
            try:
                float(v if v is not None else 0)
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}: column {name!r} must hold {want}, found {v!r} at data row {row0 + i + 1}"
                ) from None
        raise DataError(f"{path}: column {name!r} ({col.type}) must hold {want}") from None


def _normalise(
    batch: pa.RecordBatch,
    schema: LogSchema,
    path: Path,
    row0: int,
    later: Iterator[pa.RecordBatch],
) -> pa.Table:
    """One chunk of the raw log -> normalised events (module docstring). ``row0``: file row of its first row;
    ``later``: the batches after it, read only to count bad ids for an error message."""
    n = batch.num_rows
    user_col, item_col = schema.user_id, schema.item_id
    user = _as_id_strings(batch.column(user_col), user_col, path, row0, (b.column(user_col) for b in later))
    item = _as_id_strings(batch.column(item_col), item_col, path, row0, (b.column(item_col) for b in later))
    ts = _parse_timestamp(batch.column(schema.timestamp), schema.timestamp, path, row0)
    actions = np.zeros(n, np.uint8)
    for bit, name in enumerate(schema.actions):
        col = batch.column(name)
        vals = (
            _as_numbers(col, name, path, row0, "0/1 actions", fill=0.0)
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
        weight = _as_numbers(batch.column(schema.weight), schema.weight, path, row0, "numeric weights", fill=1.0)
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
    delimiter = _delimiter(path, schema.delimiter)
    text = [c for c in (schema.user_id, schema.item_id, schema.surface) if c]
    names, open_batches = _open_stream(path, delimiter, "interaction log", text)
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
    batches = _guarded(open_batches(columns), path, delimiter, "interaction log")

    def normalised() -> Iterator[pa.Table]:
        row0 = 0
        for batch in batches:
            yield _normalise(batch, schema, path, row0, batches)
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
            if v is not None and v.strip():  # an empty cell is no value, not the value ""
                row.append(feature_token(name, v))
    for name, sep in multi.items():
        values = _column(table, name, path, "multi_valued").cast(pa.string()).to_pylist()
        for row, v in zip(rows, values):
            if v:
                row.extend(feature_token(name, t) for t in (v.split() if sep == " " else v.split(sep)) if t.strip())
    return pa.array(rows, pa.list_(pa.string()))


def _empty_as_null(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Strings, with empty (or all-blank) cells as nulls: an empty author cell means no author."""
    col = col.cast(pa.string())
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()), col)


def read_items(path: str | Path, schema: ItemSchema) -> pa.Table:
    """Read an item table: ``item_id, author_id, features`` (duplicate item ids keep the first row).

    An empty author cell is no author (null), not an author named "".
    """
    text = [schema.item_id, *([schema.author_id] if schema.author_id else []), *schema.features, *schema.multi_valued]
    table = read_table(path, schema.delimiter, "item table", text)
    item = _as_id_strings(_column(table, schema.item_id, path, "ItemSchema.item_id"), schema.item_id, path)
    author = (
        _empty_as_null(_column(table, schema.author_id, path, "ItemSchema.author_id"))
        if schema.author_id
        else pa.nulls(table.num_rows, pa.string())
    )
    feats = _feature_tokens(table, schema.features, schema.multi_valued, path)
    return pa.table({"item_id": item, "author_id": author, "features": feats})


def read_users(path: str | Path, schema: UserSchema) -> pa.Table:
    """Read a user table: ``user_id, features``."""
    table = read_table(path, schema.delimiter, "user table", [schema.user_id, *schema.features])
    user = _as_id_strings(_column(table, schema.user_id, path, "UserSchema.user_id"), schema.user_id, path)
    feats = _feature_tokens(table, schema.features, {}, path)
    return pa.table({"user_id": user, "features": feats})
