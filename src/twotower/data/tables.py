"""Read and validate the optional item and user tables (CSV or Parquet) into normalised Arrow tables.

* items: ``item_id: string, author_id: string | null, features: list<string>`` (+ ``text: string`` when the
  schema names text columns: ``"column: value"`` lines of the non-empty ones)
* users: ``user_id: string, features: list<string>``

Features are ``"field=value"`` tokens (:func:`twotower.layout.feature_token`) of the mapped single-valued
columns and of the split multi-valued ones; authors, features and ids are read from CSV as text. The
tables are catalogue-sized (not event-sized), so each is read whole.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..layout import feature_token
from .columns import as_id_strings
from .files import column, read_table
from .schemas import ItemSchema, UserSchema


def _feature_tokens(table: pa.Table, names: list[str], multi: dict[str, str], path: str | Path) -> pa.Array:
    """Per row, the list of ``"field=value"`` tokens of its categorical and multi-valued columns.

    Catalogue-sized tables, so a per-row comprehension is fine here.
    """
    rows: list[list[str]] = [[] for _ in range(table.num_rows)]
    for name in names:
        values = column(table, name, path, "features").cast(pa.string()).to_pylist()
        for row, v in zip(rows, values):
            if v is not None and v.strip():  # an empty cell is no value, not the value ""
                row.append(feature_token(name, v))
    for name, sep in multi.items():
        values = column(table, name, path, "multi_valued").cast(pa.string()).to_pylist()
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
    as_text = [
        schema.item_id,
        *([schema.author_id] if schema.author_id else []),
        *schema.features,
        *schema.multi_valued,
        *schema.text,
    ]
    table = read_table(path, schema.delimiter, "item table", as_text)
    item = as_id_strings(column(table, schema.item_id, path, "ItemSchema.item_id"), schema.item_id, path)
    author = (
        _empty_as_null(column(table, schema.author_id, path, "ItemSchema.author_id"))
        if schema.author_id
        else pa.nulls(table.num_rows, pa.string())
    )
    feats = _feature_tokens(table, schema.features, schema.multi_valued, path)
    out = {"item_id": item, "author_id": author, "features": feats}
    if schema.text:
        out["text"] = pa.array(item_text_lines(table, schema.text, path), pa.string())
    return pa.table(out)


def item_text_lines(table: pa.Table, names: list[str], path: str | Path) -> list[str]:
    """Per row, the text the sentence encoder reads: ``"column: value"`` of each non-empty text column, one
    line each (the column names tell the encoder what each value is)."""
    rows: list[list[str]] = [[] for _ in range(table.num_rows)]
    for name in names:
        values = column(table, name, path, "ItemSchema.text").cast(pa.string()).to_pylist()
        for row, v in zip(rows, values):
            if v is not None and v.strip():
                row.append(f"{name}: {v.strip()}")
    return ["\n".join(r) for r in rows]


def read_users(path: str | Path, schema: UserSchema) -> pa.Table:
    """Read a user table: ``user_id, features``."""
    table = read_table(path, schema.delimiter, "user table", [schema.user_id, *schema.features])
    user = as_id_strings(column(table, schema.user_id, path, "UserSchema.user_id"), schema.user_id, path)
    feats = _feature_tokens(table, schema.features, {}, path)
    return pa.table({"user_id": user, "features": feats})
