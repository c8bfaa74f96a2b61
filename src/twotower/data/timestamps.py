"""Timestamps of an interaction log -> int64 seconds since the epoch, with errors that name a unit mistake.

Numbers are seconds since the epoch; strings are epoch seconds (digit strings) or ISO-8601 dates (no zone =
UTC), judged value by value; timestamp and date columns keep their instant. Anything finer than a second is
truncated (floored) to the second. Values outside the years :data:`MIN_YEAR`..:data:`MAX_YEAR` are an error,
and one that fits once divided by 1e3, 1e6 or 1e9 is named as an epoch in milliseconds, microseconds or
nanoseconds (the usual mistake). ``row0`` arguments are the file row of a column's first value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from .columns import is_text

MIN_YEAR, MAX_YEAR = 1900, 2199  # timestamps outside are taken for a unit mistake
_MIN_SECONDS, _END_SECONDS = -2_208_988_800, 7_258_118_400  # 1900-01-01 and 2200-01-01, UTC


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


def parse_timestamps(col: pa.Array | pa.ChunkedArray, name: str, path: str | Path, row0: int = 0) -> np.ndarray:
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
    if is_text(dtype):
        return _strings_to_seconds(col, name, path, row0)
    raise DataError(
        f"{path}: column {name!r} has type {col.type}, not a timestamp; use seconds since the epoch or "
        "ISO-8601 strings, or map another column with --time-col"
    )
