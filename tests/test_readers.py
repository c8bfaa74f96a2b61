import numpy as np
import pytest

from twotower.data.readers import DataError, LogSchema, read_log


def write(tmp_path, text, name="log.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_missing_column_names_file_column_and_fix(tmp_path):
    p = write(tmp_path, "user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(DataError, match=r"missing column 'user_id'.*\['user', 'item_id', 'timestamp'\].*user-col"):
        read_log(p, LogSchema())


def test_null_id_reports_row(tmp_path):
    p = write(tmp_path, "user_id,item_id,timestamp\n1,2,3\n,4,5\n")
    with pytest.raises(DataError, match="'user_id' has 1 null/empty id.*row 2"):
        read_log(p, LogSchema())


def test_unparsable_timestamp_reports_row_and_value(tmp_path):
    p = write(tmp_path, "user_id,item_id,timestamp\n1,2,2024-01-01\n1,3,yesterday\n")
    with pytest.raises(DataError, match="unparsable timestamp 'yesterday' at data row 2"):
        read_log(p, LogSchema())


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        read_log(write(tmp_path, ""), LogSchema())
    with pytest.raises(DataError, match="no rows"):
        read_log(write(tmp_path, "user_id,item_id,timestamp\n", "h.csv"), LogSchema())
    with pytest.raises(DataError, match="does not exist"):
        read_log(tmp_path / "nope.csv", LogSchema())


def test_iso_timestamps_and_actions(tmp_path):
    p = write(tmp_path, "user_id,item_id,timestamp,c,l\n1,2,2024-01-01T00:00:10,1,0\n1,3,2024-01-01T00:00:20,1,1\n")
    t = read_log(p, LogSchema(actions=["c", "l"]))
    np.testing.assert_array_equal(np.diff(t.column("timestamp").to_numpy()), [10])
    np.testing.assert_array_equal(t.column("actions").to_numpy(), [1, 3])


def test_non_binary_action_is_rejected(tmp_path):
    p = write(tmp_path, "user_id,item_id,timestamp,c\n1,2,3,2\n")
    with pytest.raises(DataError, match="must be 0/1"):
        read_log(p, LogSchema(actions=["c"]))


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": ["a", "b"], "i": [1, 2], "t": [5, 6]}), p)
    t = read_log(p, LogSchema(user_id="u", item_id="i", timestamp="t"))
    assert t.column("item_id").to_pylist() == ["1", "2"]


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Stream logs in 3-row chunks and 64-byte CSV blocks, so every check meets many chunk boundaries."""
    from twotower.data import readers

    monkeypatch.setattr(readers, "CHUNK_ROWS", 3)
    monkeypatch.setattr(readers, "CSV_BLOCK_BYTES", 64)


def test_streamed_errors_count_and_locate_rows_across_chunks(tmp_path, tiny_chunks):
    rows = [f"u{r},i{r},{r},0" for r in range(40)]
    rows[25], rows[33] = ",i25,25,0", ",i33,33,0"
    p = write(tmp_path, "user_id,item_id,timestamp,c\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="'user_id' has 2 null/empty id.*first at data row 26;"):
        read_log(p, LogSchema(actions=["c"]))
    rows[25], rows[33] = "u25,i25,25,0", "u33,i33,33,2"
    p = write(tmp_path, "user_id,item_id,timestamp,c\n" + "\n".join(rows) + "\n", "bad_action.csv")
    with pytest.raises(DataError, match="must be 0/1, found 2.0 at data row 34"):
        read_log(p, LogSchema(actions=["c"]))
    rows[33] = "u33,i33,33,0,extra"
    p = write(tmp_path, "user_id,item_id,timestamp,c\n" + "\n".join(rows) + "\n", "ragged.csv")
    with pytest.raises(DataError, match="cannot be parsed"):
        read_log(p, LogSchema(actions=["c"]))


def test_streamed_log_equals_whole_file_read(tmp_path, tiny_chunks):
    from twotower.data.readers import iter_log, read_table

    lines = [f"{r % 7},{r % 5},2024-01-0{1 + r % 9}T00:00:{r % 60:02d},{r % 2}" for r in range(50)]
    lines[45] = "x7,4,2024-01-02T00:00:45,1"  # the id column turns textual late in the file
    p = write(tmp_path, "user_id,item_id,timestamp,c\n" + "\n".join(lines) + "\n")
    chunks = list(iter_log(p, LogSchema(actions=["c"])))
    assert [len(c) for c in chunks] == [3] * 16 + [2]
    t = read_log(p, LogSchema(actions=["c"]))
    whole = read_table(p)
    assert t.column("user_id").to_pylist() == whole.column("user_id").to_pylist()
    assert t.column("item_id").to_pylist() == [str(v) for v in whole.column("item_id").to_pylist()]
    expected = whole.column("timestamp").cast("timestamp[s]").cast("int64").to_numpy()
    np.testing.assert_array_equal(t.column("timestamp").to_numpy(), expected)


def test_non_iso_timestamps_are_seconds(tmp_path, tiny_chunks):
    """Arrow cannot parse these, pandas does (with one format guessed from the first row for every chunk);
    pandas 3 returns microseconds, which must still come out as seconds."""
    lines = [f"u{r},i{r},2024/01/31 12:{r:02d}" for r in range(10)]
    p = write(tmp_path, "user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    t = read_log(p, LogSchema())
    np.testing.assert_array_equal(t.column("timestamp").to_numpy(), 1706702400 + 60 * np.arange(10))
