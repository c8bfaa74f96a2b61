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
