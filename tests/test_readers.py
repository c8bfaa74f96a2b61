import numpy as np
import pytest

from twotower.data.readers import read_log
from twotower.data.schemas import LogSchema
from twotower.errors import DataError


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
    from twotower.data import files, readers

    monkeypatch.setattr(readers, "CHUNK_ROWS", 3)
    monkeypatch.setattr(files, "CSV_BLOCK_BYTES", 64)


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
    from twotower.data.files import read_table
    from twotower.data.readers import iter_log

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
    """Arrow cannot parse these, pandas' ISO-8601 parser does (it takes / for -, and no seconds);
    pandas 3 returns microseconds, which must still come out as seconds."""
    lines = [f"u{r},i{r},2024/01/31 12:{r:02d}" for r in range(10)]
    p = write(tmp_path, "user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    t = read_log(p, LogSchema())
    np.testing.assert_array_equal(t.column("timestamp").to_numpy(), 1706702400 + 60 * np.arange(10))


def test_csv_ids_are_text_never_numbers(tmp_path):
    """007, 7 and 7.0 are three items; 20-digit ids differing in the last digit stay apart (not rounded floats)."""
    p = write(
        tmp_path,
        "user_id,item_id,timestamp\n1,007,1\n1,7,2\n1,7.0,3\n2,12345678901234567891,4\n2,12345678901234567892,5\n",
    )
    t = read_log(p, LogSchema())
    assert t.column("item_id").to_pylist() == ["007", "7", "7.0", "12345678901234567891", "12345678901234567892"]
    assert t.column("user_id").to_pylist() == ["1", "1", "1", "2", "2"]


def test_streamed_csv_ids_keep_their_text_in_every_block(tmp_path, tiny_chunks):
    """With types inferred per block, 007 became 7 in a numeric-looking block and stayed 007 in a textual one."""
    items = [f"{r:03d}" for r in range(40)]
    items[35] = "x35"  # the column turns textual late in the file
    p = write(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"{r},{i},{r}\n" for r, i in enumerate(items)))
    t = read_log(p, LogSchema())
    assert t.column("item_id").to_pylist() == items
    assert t.column("user_id").to_pylist() == [str(r) for r in range(40)]


def test_parquet_float_ids_are_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1.0, None, 7.0], "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3]}), p)
    with pytest.raises(DataError, match=r"log.parquet: id column 'user_id' holds double.*astype\('Int64'\)"):
        read_log(p, LogSchema())
    pq.write_table(pa.table({"user_id": ["u"], "item_id": [[1]], "timestamp": [1]}), p)
    with pytest.raises(DataError, match="id column 'item_id' has type list"):
        read_log(p, LogSchema())


def test_sub_second_timestamps_are_truncated_to_seconds(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "us.parquet"
    stamps = pd.DatetimeIndex([pd.Timestamp("2020-01-01 00:00:00.5"), pd.Timestamp("2020-01-02")]).as_unit("us")
    pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": stamps}).to_parquet(p)
    np.testing.assert_array_equal(read_log(p, LogSchema()).column("timestamp").to_numpy(), [1577836800, 1577923200])
    p = tmp_path / "tz.parquet"
    zoned = pa.array([1_577_836_800_250, -1_750], pa.timestamp("ms", tz="Europe/Paris"))
    pq.write_table(pa.table({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": zoned}), p)
    np.testing.assert_array_equal(read_log(p, LogSchema()).column("timestamp").to_numpy(), [1577836800, -2])
    p = write(tmp_path, "user_id,item_id,timestamp\na,x,2020-01-01T00:00:00.5\na,y,2020-01-01T00:00:01\n")
    np.testing.assert_array_equal(read_log(p, LogSchema()).column("timestamp").to_numpy(), [1577836800, 1577836801])


def test_epoch_and_iso_variants_mix_in_one_column(tmp_path):
    rows = [
        "1577836900",
        "2020-01-01T00:00:00",
        "2020-01-01 10:00:00",
        "2020-01-01T10:00:00Z",
        "2020-01-01T12:00+02:00",
    ]
    p = write(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"u,i{r},{v}\n" for r, v in enumerate(rows)))
    expected = [1577836900, 1577836800, 1577872800, 1577872800, 1577872800]
    np.testing.assert_array_equal(read_log(p, LogSchema()).column("timestamp").to_numpy(), expected)


def test_unparsable_timestamp_names_the_value_that_fails(tmp_path, tiny_chunks):
    p = write(tmp_path, "user_id,item_id,timestamp\nu1,i1,100\nu1,i2,abc\nu2,i3,300\n")
    with pytest.raises(DataError, match="unparsable timestamp 'abc' at data row 2;"):
        read_log(p, LogSchema())
    rows = [f"u,i,2020-01-{1 + r % 28:02d}" for r in range(40)]
    rows[5], rows[30] = "u,i,1577836800", "u,i,31/01/2020"
    p = write(tmp_path, "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n", "late.csv")
    with pytest.raises(DataError, match="unparsable timestamp '31/01/2020' at data row 31;"):
        read_log(p, LogSchema())


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("1600000000000", "milliseconds since the epoch: divide the column by 1,000$"),
        ("1600000000000000", "microseconds since the epoch: divide the column by 1,000,000$"),
        ("1e30", "check the column mapping"),
        ("-9999999999", "outside the years 1900..2199"),
        ("2500-01-01", "outside the years 1900..2199"),
    ],
)
def test_absurd_timestamps_are_rejected(tmp_path, value, hint):
    p = write(tmp_path, f"user_id,item_id,timestamp\nu,a,1600000000\nu,b,{value}\n")
    with pytest.raises(DataError, match=f"log.csv: column 'timestamp' has timestamp .*at data row 2.*{hint}"):
        read_log(p, LogSchema())


def test_tsv_is_tab_separated_unless_told(tmp_path):
    p = write(tmp_path, "user_id\titem_id\ttimestamp\nu1\ti,1\t5\n", "log.tsv")
    assert read_log(p, LogSchema()).column("item_id").to_pylist() == ["i,1"]
    with pytest.raises(DataError, match="missing column 'user_id'"):
        read_log(p, LogSchema(delimiter=";"))


def test_wrong_kind_of_file_gets_the_right_message(tmp_path):
    p = write(tmp_path, "user_id,item_id,timestamp\nu,i,1\n", "log.parquet")
    with pytest.raises(DataError, match="log.parquet is not a readable Parquet file: .*Rewrite it as Parquet") as e:
        read_log(p, LogSchema())
    assert "delimiter" not in str(e.value)
    # a directory is a partitioned log: every .parquet file in it must be one
    with pytest.raises(DataError, match="a file in it is not a readable Parquet file") as e:
        read_log(tmp_path, LogSchema())
    assert "log.parquet" in str(e.value) and "delimiter" not in str(e.value)


def test_empty_author_and_feature_cells_are_no_value(tmp_path):
    from twotower.data.schemas import ItemSchema
    from twotower.data.tables import read_items

    p = write(tmp_path, "item_id,author,lang\n1,007,en\n2,,\n3, ,fr\n", "items.csv")
    t = read_items(p, ItemSchema(author_id="author", features=["lang"]))
    assert t.column("author_id").to_pylist() == ["007", None, None]
    assert t.column("features").to_pylist() == [["lang=en"], [], ["lang=fr"]]


@pytest.mark.parametrize(
    "column,schema,says",
    [("click", LogSchema(actions=["click"]), "0/1 actions, found 'yes' at data row 2"),
     ("weight", LogSchema(weight="weight"), "numeric weights, found 'yes' at data row 2")],
)  # fmt: skip
def test_text_in_a_numeric_column_names_the_value_and_row(tmp_path, column, schema, says):
    """'yes' in an action or weight column was an ArrowInvalid traceback."""
    p = write(tmp_path, f"user_id,item_id,timestamp,{column}\n1,a,1,1\n1,b,2,yes\n")
    with pytest.raises(DataError, match=says):
        read_log(p, schema)
