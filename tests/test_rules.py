"""Action rules (twotower.data.rules): a rating column -> named actions, in the reader and through prepare."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from twotower import config as cfgmod
from twotower.data import LogSchema, PrepareConfig, prepare_files
from twotower.data.readers import read_log
from twotower.data.rules import ActionRule, parse_rule, split_action
from twotower.errors import ConfigError, DataError

RULES = {"liked": "rating >= 3.5", "disliked": "rating <= 2", "loved": "rating == 5", "not_five": "rating != 5"}


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Stream logs in 3-row chunks and 64-byte CSV blocks, so rules meet many chunk boundaries."""
    from twotower.data import files, readers

    monkeypatch.setattr(readers, "CHUNK_ROWS", 3)
    monkeypatch.setattr(files, "CSV_BLOCK_BYTES", 64)


def write_log(path, ratings, **extra):
    n = len(ratings)
    table = pa.table(
        {
            "user_id": [f"u{r % 3}" for r in range(n)],
            "item_id": [f"i{r}" for r in range(n)],
            "timestamp": list(range(n)),
            "rating": pa.array(ratings, pa.float64() if path.suffix == ".parquet" else None),
            **extra,
        }
    )
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def bits(actions, bit):
    return [bool(a >> bit & 1) for a in actions]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_rules_map_ratings_half_stars_and_nulls_to_actions(tmp_path, tiny_chunks, fmt):
    ratings = [4, 3.5, None, 1, 5, 2.5, 2, 3]  # None: an empty CSV cell / a Parquet null -> every rule false
    path = write_log(tmp_path / f"log.{fmt}", ratings)
    actions = read_log(path, LogSchema(action_rules=RULES)).column("actions").to_numpy()
    assert bits(actions, 0) == [True, True, False, False, True, False, False, False]  # liked: >= 3.5
    assert bits(actions, 1) == [False, False, False, True, False, False, True, False]  # disliked: <= 2
    assert bits(actions, 2) == [False, False, False, False, True, False, False, False]  # loved: == 5
    assert bits(actions, 3) == [True, True, False, True, False, True, True, True]  # not_five: null is still false


def test_nan_and_integer_and_text_numbers_compare_as_numbers(tmp_path):
    p = tmp_path / "log.parquet"
    table = pa.table(
        {"user_id": ["a"] * 3, "item_id": ["x", "y", "z"], "timestamp": [1, 2, 3], "f": [4.0, float("nan"), 1.0]}
    )
    pq.write_table(table.append_column("i", pa.array([4, 5, 1])).append_column("s", pa.array(["4", "4.5", ""])), p)
    rules = {"f_hi": "f > 2", "f_not": "f != 2", "i_hi": "i >= 4", "s_hi": "s>=4"}
    actions = read_log(p, LogSchema(action_rules=rules)).column("actions").to_numpy()
    assert bits(actions, 0) == [True, False, False] and bits(actions, 1) == [True, False, True]  # NaN: false
    assert bits(actions, 2) == [True, True, False] and bits(actions, 3) == [True, True, False]


@pytest.mark.parametrize(
    "text, says",
    [
        ("liked: rating => 4", "'=' comes second"),
        ("liked: rating = 4", "equality is '=='"),
        ("liked: rating >= x", "'x' is not a number"),
        ("liked: rating >=", "the number is missing"),
        ("liked: >= 4", "the column name is missing"),
        ("liked: rating >= 4 and rating < 5", "one column, one comparison operator and one number"),
        ("liked: rating >= inf", "not a finite number"),
        ("lik ed: rating >= 4", "action name must be"),
        ("liked rating >= 4", "expected '<name>: <column> <op> <number>'"),
    ],
)
def test_a_bad_rule_names_the_rule_the_fault_and_the_form(text, says):
    with pytest.raises(ConfigError, match='e.g. "liked: rating >= 4"') as info:
        parse_rule(*split_action(text))
    assert says in str(info.value) and info.value.field == "action_rules"
    with pytest.raises(ConfigError, match=says):
        LogSchema(action_rules=dict([split_action(text)]))


def test_rule_grammar_keeps_columns_with_colons_and_spaces():
    assert parse_rule(*split_action("good: rating:float>=3.5")) == ActionRule("good", "rating:float", ">=", 3.5)
    assert parse_rule("hi", "  my score  <  -0.5 ") == ActionRule("hi", "my score", "<", -0.5)


def test_a_rule_on_a_missing_column_names_the_columns_there_are(tmp_path):
    path = write_log(tmp_path / "log.csv", [4, 5])
    with pytest.raises(DataError, match=r"'liked: ratin >= 4' reads column 'ratin'.*\['user_id', .*'rating'\]"):
        read_log(path, LogSchema(action_rules={"liked": "ratin >= 4"}))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_value_that_is_no_number_names_the_value_and_row(tmp_path, tiny_chunks, fmt):
    path = tmp_path / f"log.{fmt}"
    ratings = [str(r % 5 + 1) for r in range(30)]
    ratings[22] = "four"
    table = pa.table({"user_id": ["u"] * 30, "item_id": [f"i{r}" for r in range(30)], "timestamp": range(30)})
    table = table.append_column("rating", pa.array(ratings))
    pq.write_table(table, path) if fmt == "parquet" else pacsv.write_csv(table, path)
    with pytest.raises(DataError, match=r"'rating' must hold numbers, found 'four' at data row 23 \(action rule"):
        read_log(path, LogSchema(action_rules={"liked": "rating >= 4"}))


def test_rules_follow_the_action_columns_in_the_bitmask(tmp_path):
    path = write_log(tmp_path / "log.csv", [5, 1, 4], click=[0, 1, 1])
    schema = LogSchema(actions=["click"], action_rules={"liked": "rating >= 4"})
    assert schema.action_names() == ["click", "liked"]
    np.testing.assert_array_equal(read_log(path, schema).column("actions").to_numpy(), [2, 1, 3])
    with pytest.raises(ConfigError, match=r"action name\(s\) \['click'\] used twice"):
        LogSchema(actions=["click"], action_rules={"click": "rating >= 4"})


def test_too_many_actions_in_all_is_a_config_error(tmp_path):
    cols = [f"c{i}" for i in range(6)]
    with pytest.raises(ConfigError, match=r"9 actions \(6 action columns \+ 3 action rules\): at most 8"):
        LogSchema(actions=cols, action_rules={f"r{i}": "rating > 0" for i in range(3)})
    schema = LogSchema(actions=cols, action_rules={f"r{i}": "rating > 0" for i in range(2)})  # 8 is fine
    schema.actions = [*cols, "c6"]  # changed after it was built: the reader checks again
    with pytest.raises(ConfigError, match="at most 8"):
        read_log(write_log(tmp_path / "log.csv", [1.0]), schema)


def test_rules_from_a_toml_config(tmp_path):
    toml = tmp_path / "prep.toml"
    toml.write_text('[log]\nuser_id = "user"\n\n[log.action_rules]\nliked = "rating >= 4"\ndisliked = "rating <= 2"\n')
    cfg = cfgmod.load(PrepareConfig, toml)
    assert cfg.log.action_rules == {"liked": "rating >= 4", "disliked": "rating <= 2"}
    toml.write_text('[log.action_rules]\nliked = "rating >> 4"\n')
    with pytest.raises(ConfigError, match=r"prep.toml \[log\]: action rule 'liked: rating >> 4'"):
        cfgmod.load(PrepareConfig, toml)
    toml.write_text("[log.action_rules]\nliked = 4\n")
    with pytest.raises(ConfigError, match=r"liked = 4 is an integer; expected a string"):
        cfgmod.load(PrepareConfig, toml)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_rules_prepare_like_precomputed_action_columns(tmp_path, monkeypatch, fmt):
    """The equivalence: rules on a rating column give the dataset that 0/1 columns computed beforehand give."""
    from twotower.data import files, readers

    monkeypatch.setattr(readers, "CHUNK_ROWS", 7)
    monkeypatch.setattr(files, "CSV_BLOCK_BYTES", 128)
    rng = np.random.default_rng(0)
    n = 300
    ratings = (rng.integers(1, 11, n) / 2).tolist()  # half-stars 0.5 .. 5.0
    for r in rng.choice(n, 20, replace=False):
        ratings[r] = None
    rules = {"liked": "rating >= 4", "disliked": "rating <= 2", "half": "rating == 3.5"}
    pre = {
        "liked": [int(r is not None and r >= 4) for r in ratings],
        "disliked": [int(r is not None and r <= 2) for r in ratings],
        "half": [int(r == 3.5) for r in ratings],
    }
    click = rng.integers(0, 2, n).tolist()
    ruled = write_log(tmp_path / f"ruled.{fmt}", ratings, click=click)
    precomputed = write_log(tmp_path / f"pre.{fmt}", ratings, click=click, **pre)
    a = prepare_files(ruled, tmp_path / "a", PrepareConfig(log=LogSchema(actions=["click"], action_rules=rules)))
    b = prepare_files(precomputed, tmp_path / "b", PrepareConfig(log=LogSchema(actions=["click", *pre])))
    for f in sorted((tmp_path / "a").glob("*.npy")):
        x, y = np.load(f), np.load(tmp_path / "b" / f.name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f.name
    assert a["actions"] == b["actions"] == ["click", "liked", "disliked", "half"]
    for key in ("num_events", "num_users", "num_items", "split_sizes", "time_range"):
        assert a[key] == b[key], key
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["action_rules"] == rules and manifest["config"]["log"]["action_rules"] == rules
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["action_rules"] == {}
