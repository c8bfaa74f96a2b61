"""Opening input files (CSV/TSV or Parquet, by name) with errors that name the file and the fix.

Two ways in: :func:`read_table` reads a whole (catalogue-sized) file; :func:`open_stream` gives a file's
column names and a function that streams chosen columns in record batches, so an event-sized log is
never held whole. A log may also be a directory of Parquet files, hive-partitioned or not
(``events/date=2024-01-01/part-0.parquet``): read as one pyarrow dataset, its files in sorted path order,
the partition keys as columns, one batch at a time (:func:`parquet_files`). Both refuse missing, empty,
unparsable and header-only inputs with a :class:`~twotower.errors.DataError`. CSV columns named ``text``
are read as strings, never inferred as numbers (``007`` stays an id), and the delimiter follows the file
name unless given (:func:`delimiter_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError

CSV_BLOCK_BYTES = 1 << 20  # Arrow's default; a streamed CSV column's type is inferred from its first block

_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def check_file(path: Path, what: str) -> None:
    """``path`` must be an existing, non-empty file; ``what`` names it in the error ("item table")."""
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory; give the path of a CSV/TSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs a header row and at least one row of data")


def is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files under directory ``path`` (recursively), sorted by path; hidden and ``_``-prefixed files
    and directories (``_SUCCESS``, ``.crc``, ``_temporary``) are skipped, as Spark and Hive write them."""

    def visible(p: Path) -> bool:
        return not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)

    return sorted(p for p in path.rglob("*") if p.is_file() and is_parquet(p) and visible(p))


def _dataset_stream(path: Path, what: str, batch_rows: int):
    """(names, rows, batches) of a directory of Parquet files read as one hive-partitioned pyarrow dataset."""
    import pyarrow.dataset as ds

    files = parquet_files(path)
    if not files:
        raise DataError(
            f"{what} {path} is a directory with no .parquet files; give a CSV/TSV or Parquet file, or a directory "
            "of Parquet files (hive-partitioned like date=2024-01-01/part-0.parquet, or not)"
        )
    dataset = ds.dataset([str(f) for f in files], format="parquet", partitioning="hive", partition_base_dir=str(path))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
        # no threads and no read-ahead beyond one batch: the files' order is kept and memory stays one batch deep
        return dataset.to_batches(
            columns=columns, batch_size=batch_rows, use_threads=False, batch_readahead=1, fragment_readahead=1
        )

    return dataset.schema.names, rows, batches


DELIMITER_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}


def delimiter_for(path: Path, given: str | None) -> str:
    """``given``, else tab for a ``.tsv`` / ``.tab`` file (compressed or not), else a comma.

    ``given`` may be a name (``tab``, ``comma``, ``semicolon``, ``pipe``, ``space``) or the two characters
    ``\\t`` as a shell passes them; anything else must be one character (a ConfigError says so)."""
    if given is not None:
        d = DELIMITER_NAMES.get(given.lower() if len(given) > 1 else given, given)
        if len(d) != 1:
            raise ConfigError(
                f"delimiter {given!r} is not one character; give one (e.g. --delimiter ';') or a name: "
                f"{', '.join(DELIMITER_NAMES)}",
                field="delimiter",
            )
        return d
    suffixes = [s for s in path.suffixes if s.lower() not in _COMPRESSED]
    return "\t" if suffixes and suffixes[-1].lower() in (".tsv", ".tab") else ","


def unparsable(path: Path, what: str, delimiter: str, exc: Exception) -> DataError:
    """The error for a file Arrow cannot parse, with the likely fix for its format."""
    reason = str(exc).strip().rstrip(".")
    if is_parquet(path):
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
    ``text`` columns, which are read as strings. ``delimiter`` None: by the file name (:func:`delimiter_for`)."""
    path = Path(path)
    check_file(path, what)
    delimiter = delimiter_for(path, delimiter)
    try:
        if is_parquet(path):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path, parse_options=_parse_options(delimiter), convert_options=_convert_options(text)
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise unparsable(path, what, delimiter, exc) from exc
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


def open_stream(
    path: Path, delimiter: str, what: str, text: Iterable[str], batch_rows: int
) -> tuple[list[str], Callable[[list[str]], Iterable[pa.RecordBatch]]]:
    """Column names of a CSV or Parquet file, and a function that streams the given columns as record batches
    in file order (CSV ``text`` columns as strings; Parquet batches of ``batch_rows`` rows, CSV ones of a
    block of :data:`CSV_BLOCK_BYTES`). Raises :func:`read_table`'s errors for missing, empty,
    unparsable and header-only files."""
    if path.is_dir():
        try:
            names, rows, batches = _dataset_stream(path, what, batch_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{what} directory {path}: a file in it is not a readable Parquet file ({exc}); rewrite or remove "
                "it (every .parquet file under the directory is part of the log)"
            ) from exc
        if rows == 0:
            raise _no_rows(path, what)
        return names, batches
    check_file(path, what)
    try:
        if is_parquet(path):
            source = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds a whole row group's pages
            names, rows = source.schema_arrow.names, source.metadata.num_rows

            def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
                return source.iter_batches(batch_size=batch_rows, columns=columns)

        else:
            head = _open_csv(path, delimiter, text=text)
            names = head.schema.names
            first = next(iter(head), None)
            rows = 0 if first is None else first.num_rows

            def batches(columns: list[str]) -> Iterable[pa.RecordBatch]:
                return _csv_batches(path, delimiter, columns, text)

    except (pa.ArrowInvalid, OSError) as exc:
        raise unparsable(path, what, delimiter, exc) from exc
    if rows == 0:
        raise _no_rows(path, what)
    return names, batches


def guarded(batches: Iterable[pa.RecordBatch], path: Path, delimiter: str, what: str) -> Iterator[pa.RecordBatch]:
    """``batches``, with a parse error met half-way through the file turned into a :class:`DataError`."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise unparsable(path, what, delimiter, exc) from exc
        yield batch


def require(names: list[str], name: str, path: str | Path, option: str) -> None:
    """Column ``name`` must be among ``names``; the error names the file's columns and the mapping ``option``."""
    if name not in names:
        raise DataError(
            f"{path}: missing column {name!r}; the file has columns {names}. Rename the column or map it with {option}"
        )


def column(table: pa.Table, name: str, path: str | Path, option: str) -> pa.ChunkedArray:
    """``table``'s column ``name``, or :func:`require`'s error."""
    require(table.column_names, name, path, option)
    return table.column(name)
