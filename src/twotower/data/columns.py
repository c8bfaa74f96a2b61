"""Column checks shared by the log and side-table readers: ids as strings, cells as numbers.

Ids are read from CSV as text, never as numbers, so ``007``, ``7`` and ``7.0`` stay three ids; Parquet ids
must be strings or integers (a float column would merge ``7`` and ``7.0``). A null or empty id is an error
naming its data row. ``row0`` arguments are the file row of a column's first value (streamed chunks start
mid-file), so row numbers in errors count from the start of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError


def is_text(dtype: pa.DataType) -> bool:
    """Whether ``dtype`` is an Arrow string type (plain, large or view)."""
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def _bad_ids(col: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """bool mask of null or empty ids, or None when there are none (the usual case, found without a copy)."""
    empty = pc.equal(col, "") if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else None
    if col.null_count == 0 and (empty is None or not pc.any(empty).as_py()):
        return None
    bad = col.is_null()
    if empty is not None:
        bad = pc.or_(bad, empty.fill_null(False))
    return bad.to_numpy(zero_copy_only=False)


def as_id_strings(
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
    if not (is_text(dtype) or pa.types.is_integer(dtype) or pa.types.is_binary(dtype)):
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


def as_numbers(col: pa.Array, name: str, path: Path, row0: int, want: str, fill: float) -> np.ndarray:
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
