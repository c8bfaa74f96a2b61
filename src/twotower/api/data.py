"""``twotower.prepare``: a log (and item / user tables) as DataFrames or paths -> a prepared dataset."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import config as cfgmod
from ..data.config import PrepareConfig
from ..data.dataset import SequenceData
from ..data.prepare import prepare_files
from ..errors import DataError


def to_arrow(table: Any, what: str) -> pa.Table:
    """A pandas or polars DataFrame, a pyarrow Table or RecordBatch -> pa.Table (DataError otherwise)."""
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if hasattr(table, "to_arrow"):  # polars
        return table.to_arrow()
    module = type(table).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(table, preserve_index=False)
    raise DataError(
        f"{what}: give a file path, a pandas or polars DataFrame or a pyarrow Table, not {type(table).__name__}"
    )


def _as_file(table: Any, what: str, tmp: Path) -> Path | None:
    """``table`` as a path prepare can read: a path as given, a table written to ``tmp/<what>.parquet``."""
    if table is None:
        return None
    if isinstance(table, (str, Path)):
        return Path(table)
    path = tmp / f"{what}.parquet"
    pq.write_table(to_arrow(table, what), path)
    return path


def prepare(
    events: Any,
    items: Any = None,
    users: Any = None,
    config: PrepareConfig | dict | str | Path | None = None,
    out: str | Path | None = None,
) -> SequenceData:
    """Prepare a log for training; returns the dataset (``SequenceData``, its directory at ``.root``).

    ``events``, ``items``, ``users``: file paths (Parquet, CSV, TSV) or tables (pandas / polars DataFrames,
    pyarrow Tables). ``config``: a :class:`PrepareConfig`, a dict of its fields or a .toml/.json file
    (column names, action rules such as ``{"liked": "rating >= 4"}``). ``out``: the dataset directory
    (default: a new temporary directory). Errors are :class:`~twotower.errors.TwotowerError` naming the fix.
    """
    if isinstance(config, dict):
        cfg = cfgmod.from_dict(PrepareConfig, config, where="config")
    elif isinstance(config, (str, Path)):
        cfg = cfgmod.load(PrepareConfig, config)
    else:
        cfg = config or PrepareConfig()
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="twotower-data-"))
    with tempfile.TemporaryDirectory(prefix="twotower-inputs-") as tmp:
        paths = {
            what: _as_file(t, what, Path(tmp)) for what, t in (("events", events), ("items", items), ("users", users))
        }
        if paths["events"] is None:
            raise DataError("prepare needs the events (a path or a table)")
        prepare_files(paths["events"], out, cfg, paths["items"], paths["users"])
    return SequenceData.load(out)
