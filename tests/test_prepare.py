import json
import os
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from twotower.data import SequenceData, prepare_files, writer
from twotower.data.config import PrepareConfig
from twotower.errors import ConfigError, DataError
from twotower.layout import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID


def test_counts_order_and_stable_ties(tiny_data):
    d = SequenceData.load(tiny_data)
    assert (d.num_events, d.num_users, d.num_items) == (11, 3, 5)
    ids = d.item_ids()
    u1 = [ids[i] for i in d.event_item[d.user_offsets[0] : d.user_offsets[1]]]
    # u1: c@50, then a@100 and b@100 tied (log order a before b), d@300, e@400
    assert u1 == ["c", "a", "b", "d", "e"]
    assert d.manifest["actions"] == ["click", "like"]
    assert sorted(d.manifest["surfaces"]) == ["home", "search"]
    u2_surface = d.event_surface[d.user_offsets[1]]
    assert u2_surface == 0  # empty surface = none


def test_leave_last_out_split(tiny_data):
    d = SequenceData.load(tiny_data)
    for u in range(d.num_users):
        s = d.split_loo[d.user_offsets[u] : d.user_offsets[u + 1]]
        assert list(s[-2:]) == [SPLIT_VALID, SPLIT_TEST] and (s[:-2] == SPLIT_TRAIN).all()


def test_time_split_is_by_global_time(tiny_data):
    d = SequenceData.load(tiny_data)
    tr, te = d.event_ts[d.split_time == SPLIT_TRAIN], d.event_ts[d.split_time == SPLIT_TEST]
    assert tr.max() <= te.min()


def test_features_and_authors_hashed(tiny_data):
    d = SequenceData.load(tiny_data)
    ids = list(d.item_ids())
    nfeat = (d.item_feat_hash > 0).sum(1)
    assert nfeat[ids.index("a")] == 3 and nfeat[ids.index("c")] == 1 and nfeat[ids.index("e")] == 1
    a, b, c = (d.item_author_hash[ids.index(x)] for x in "abc")
    assert (a == b).all() and (a != c).all() and (a > 0).all()
    assert ((d.user_feat_hash > 0).sum(1) == [2, 2, 1]).all()


@pytest.mark.parametrize("scheme", ["loo", "time"])
def test_no_history_at_or_after_target(tiny_data, scheme):
    """Every training window and evaluation target only ever sees strictly earlier events."""
    d = SequenceData.load(tiny_data)
    split = d.split(scheme)
    seen = np.zeros(d.num_events, int)
    for u, start, end in d.train_windows(scheme, max_len=2):
        assert d.user_offsets[u] <= start < end <= d.user_offsets[u + 1]
        assert (split[start:end] == SPLIT_TRAIN).all()  # every target in a window is a training event
        for t in range(start, end):  # target t's history is start..t-1 (causal): earlier in sorted order
            assert (d.event_ts[start:t] <= d.event_ts[t]).all()
        seen[start:end] += 1
    np.testing.assert_array_equal(seen, (split == SPLIT_TRAIN).astype(int))  # each target exactly once
    for which in ("valid", "test"):
        users, rows = d.eval_targets(scheme, which)
        for u, r in zip(users, rows):
            assert d.user_offsets[u] <= r < d.user_offsets[u + 1]
            hist = np.arange(d.user_offsets[u], r)
            assert (d.event_ts[hist] <= d.event_ts[r]).all() and (hist < r).all()


def test_rerun_is_idempotent(tiny_files, tiny_data):
    before = {f.name: f.read_bytes() for f in tiny_data.glob("*.npy")}
    prepare_files(
        tiny_files["log"], tiny_data, tiny_config(), items_path=tiny_files["items"], users_path=tiny_files["users"]
    )
    after = {f.name: f.read_bytes() for f in tiny_data.glob("*.npy")}
    assert before == after
    assert [p.name for p in tiny_data.parent.iterdir() if p.name.startswith(".")] == []


def test_interrupted_write_leaves_previous_dataset_intact(tiny_files, tiny_data, monkeypatch):
    manifest = (tiny_data / "manifest.json").read_text()
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_save(*a, **k)

    monkeypatch.setattr(writer.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_files(tiny_files["log"], tiny_data, tiny_config())
    assert (tiny_data / "manifest.json").read_text() == manifest
    assert SequenceData.load(tiny_data).num_events == 11
    assert [p.name for p in tiny_data.parent.iterdir() if p.name.startswith(".")] == []
    fresh = tiny_data.parent / "never"
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        prepare_files(tiny_files["log"], fresh, tiny_config())
    assert not fresh.exists()


def test_manifest_has_counts_config_and_checksums(tiny_data):
    m = json.loads((tiny_data / "manifest.json").read_text())
    assert m["num_events"] == 11 and m["num_users"] == 3 and m["num_items"] == 5
    assert m["config"]["num_hashes"] == 2 and set(m["input_sha256"]) == {"log", "items", "users"}
    assert all(len(v) == 64 for v in m["input_sha256"].values())


def test_missing_dataset_files_give_clear_error(tmp_path):
    from twotower.errors import DataError

    with pytest.raises(DataError, match="run `twotower prepare`"):
        SequenceData.load(tmp_path)


def _tie_heavy_log(n: int = 400, seed: int = 0) -> dict[str, list]:
    """Users interleaved (half of them only appear in the second half), five distinct timestamps (ties
    everywhere, within and across chunks), empty surfaces."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 12, n)
    users[n // 2 :] += 12 * rng.integers(0, 2, n - n // 2)
    return {
        "user_id": [f"u{u}" for u in users],
        "item_id": [f"i{i}" for i in rng.zipf(1.5, n) % 60],
        "timestamp": (100 * rng.integers(0, 5, n)).tolist(),
        "click": rng.integers(0, 2, n).tolist(),
        "surface": rng.choice(["home", "search", "", "feed"], n).tolist(),
    }


def _assert_same_dataset(a, b):
    import pyarrow.parquet as pq

    for f in sorted(a.glob("*.npy")):
        x, y = np.load(f), np.load(b / f.name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f.name
    for name in ("items.parquet", "users.parquet"):
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for key in ("num_events", "num_users", "num_items", "surfaces", "split_sizes", "time_range"):
        assert ma[key] == mb[key], key


def _check_against_slow_reference(root, log):
    """Every user's events in (time, log position) order; users, items and surfaces numbered by first appearance."""
    d = SequenceData.load(root)
    users = list(dict.fromkeys(log["user_id"]))
    rows = sorted(range(len(log["user_id"])), key=lambda r: (users.index(log["user_id"][r]), log["timestamp"][r], r))
    assert list(d.user_ids()) == users
    assert list(d.item_ids()) == list(dict.fromkeys(log["item_id"]))
    assert [d.item_ids()[i] for i in d.event_item] == [log["item_id"][r] for r in rows]
    np.testing.assert_array_equal(d.event_ts, [log["timestamp"][r] for r in rows])
    assert d.manifest["surfaces"] == [s for s in dict.fromkeys(log["surface"]) if s]
    surface_names = ["", *d.manifest["surfaces"]]  # 0 = none
    assert [surface_names[s] for s in d.event_surface] == [log["surface"][r] for r in rows]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_chunked_read_prepares_like_one_piece(tmp_path, monkeypatch, fmt):
    """Chunk boundaries (Parquet row groups and batches, CSV blocks, encoder chunks) must not leak into the
    output: users split across chunks, ties across chunks keeping log order, ids first seen in a late chunk."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from twotower.data import LogSchema, PrepareConfig, files, readers

    log = _tie_heavy_log()
    path = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table(log), path, row_group_size=7)
    else:
        # ids look numeric for the first blocks, then turn textual: the streamed reader must switch type
        log["user_id"] = [u[1:] if r < 150 else u for r, u in enumerate(log["user_id"])]
        pacsv.write_csv(pa.table(log), path)
    cfg = PrepareConfig(log=LogSchema(actions=["click"], surface="surface"))
    prepare_files(path, tmp_path / "whole", cfg)
    monkeypatch.setattr(readers, "CHUNK_ROWS", 5)
    monkeypatch.setattr(files, "CSV_BLOCK_BYTES", 100)
    assert [len(c) for c in readers.iter_log(path, cfg.log)][:3] == [5, 5, 5]
    prepare_files(path, tmp_path / "chunked", cfg)
    _assert_same_dataset(tmp_path / "whole", tmp_path / "chunked")
    _check_against_slow_reference(tmp_path / "chunked", log)


def test_build_from_table_and_from_chunks_agree(tmp_path, monkeypatch):
    import pyarrow as pa

    from twotower.data import PrepareConfig, build, readers

    log = _tie_heavy_log(seed=1)
    n = len(log["user_id"])
    events = pa.table(
        {
            "user_id": log["user_id"],
            "item_id": log["item_id"],
            "timestamp": np.array(log["timestamp"], np.int64),
            "actions": np.array(log["click"], np.uint8),
            "surface": log["surface"],
            "weight": np.ones(n, np.float32),
        }
    )
    build(events, None, None, PrepareConfig(), tmp_path / "table")
    build([events.slice(lo, 9) for lo in range(0, n, 9)], None, None, PrepareConfig(), tmp_path / "chunks")
    monkeypatch.setattr(readers, "CHUNK_ROWS", 4)
    build(events, None, None, PrepareConfig(), tmp_path / "small")
    _assert_same_dataset(tmp_path / "table", tmp_path / "chunks")
    _assert_same_dataset(tmp_path / "table", tmp_path / "small")
    _check_against_slow_reference(tmp_path / "small", log)


DEAD_PID = 4_194_305  # above Linux's largest pid_max: never a live process


def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*"))


@pytest.mark.parametrize("kind", ["foreign_dir", "file", "dataset_with_run"])
def test_out_that_is_not_a_prepared_dataset_is_left_alone(tiny_files, tiny_data, tmp_path, kind):
    from twotower.errors import DataError

    if kind == "foreign_dir":
        out = tmp_path / "photos"
        out.mkdir()
        (out / "cat.jpg").write_bytes(b"meow")
    elif kind == "file":
        out = tmp_path / "notes.txt"
        out.write_text("keep me")
    else:  # a run written into the dataset directory: its checkpoints must survive a re-prepare
        out = tiny_data
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "best.safetensors").write_bytes(b"weights")
    before = _tree(tmp_path)
    with pytest.raises(DataError, match=f"--out {out} .*choose another --out or delete {out}"):
        prepare_files(tiny_files["log"], out, tiny_config())
    assert _tree(tmp_path) == before


def test_out_containing_an_input_is_refused(tiny_files, tmp_path):
    from twotower.errors import DataError

    before = _tree(tmp_path)
    with pytest.raises(DataError, match=f"--out {tmp_path} contains the input .*log.csv"):
        prepare_files(tiny_files["log"], tmp_path, tiny_config())
    assert _tree(tmp_path) == before
    (tmp_path / "side").mkdir()
    items = tiny_files["items"].rename(tmp_path / "side" / "items.csv")
    with pytest.raises(DataError, match="contains the input .*side/items.csv"):
        prepare_files(tiny_files["log"], tmp_path / "side" / ".." / "side", tiny_config(), items_path=items)
    assert items.exists()
    (tmp_path / "empty").mkdir()
    assert prepare_files(tiny_files["log"], tmp_path / "empty", tiny_config())["num_events"] == 11


def test_stop_between_the_renames_keeps_the_new_dataset(tiny_files, tiny_data, monkeypatch):
    """Interrupted right after the old dataset was moved aside, the complete new one must still land at --out."""
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed between the renames")

    tiny_files["log"].write_text(tiny_files["log"].read_text() + "u4,a,900,1,0,home\n")
    monkeypatch.setattr(writer.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_files(tiny_files["log"], tiny_data, tiny_config())
    assert SequenceData.load(tiny_data).num_events == 12
    assert [p.name for p in tiny_data.parent.iterdir() if p.name.startswith(".")] == []


def test_leftovers_of_a_killed_run_are_removed(tiny_files, tiny_data, caplog):
    parent = tiny_data.parent
    old, tmp, odd = (parent / f".prepared.{k}-{DEAD_PID - i}" for i, k in enumerate(("old", "tmp", "old")))
    shutil.copytree(tiny_data, old)
    tmp.mkdir()
    (tmp / "event_ts.npy").write_bytes(b"half")
    odd.mkdir()
    (odd / "thesis.tex").write_text("not ours")
    with caplog.at_level("WARNING", logger="twotower.fsutil"):
        prepare_files(tiny_files["log"], tiny_data, tiny_config())
    assert not old.exists() and not tmp.exists() and (odd / "thesis.tex").exists()
    assert f"removing {old}, the previous dataset of an earlier prepare that was killed" in caplog.text
    assert f"leaving {odd} alone" in caplog.text
    # a kept leftover under this very process's pid neither blocks the next run nor is deleted by it
    mine = parent / f".prepared.old-{os.getpid()}"
    mine.mkdir()
    (mine / "thesis.tex").write_text("not ours either")
    prepare_files(tiny_files["log"], tiny_data, tiny_config())
    assert (mine / "thesis.tex").read_text() == "not ours either"
    assert (tiny_data / "manifest.json").is_file()


def _events(users, items, ts, surfaces=None):
    import pyarrow as pa

    n = len(users)
    return pa.table(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": np.asarray(ts, np.int64),
            "actions": np.zeros(n, np.uint8),
            "surface": surfaces if surfaces is not None else [""] * n,
            "weight": np.ones(n, np.float32),
        }
    )


def test_more_surfaces_than_int16_holds_is_an_error(tmp_path):
    from twotower.data import PrepareConfig, build
    from twotower.errors import DataError

    n = 32_767  # int16 max
    events = _events([f"u{i % 7}" for i in range(n)], ["a"] * n, np.arange(n), [f"s{i}" for i in range(n)])
    build(events, None, None, PrepareConfig(), tmp_path / "fits")
    assert SequenceData.load(tmp_path / "fits").event_surface.max() == n
    events = _events(["u"] * (n + 1), ["a"] * (n + 1), np.arange(n + 1), [f"s{i}" for i in range(n + 1)])
    with pytest.raises(DataError, match="surface column has more than 32,767 distinct values.*--surface-col"):
        build(events, None, None, PrepareConfig(), tmp_path / "over")


def test_empty_author_is_no_author(tiny_files, tmp_path):
    tiny_files["items"].write_text("item_id,author,genres,year\na,,Comedy,1995\nb,,Drama,\nc,y,,\nd,y,,\ne,,,\n")
    prepare_files(tiny_files["log"], tmp_path / "d", tiny_config(), items_path=tiny_files["items"])
    d = SequenceData.load(tmp_path / "d")
    has_author = (d.item_author_hash != 0).all(1)
    assert dict(zip(d.item_ids(), has_author)) == {"a": False, "b": False, "c": True, "d": True, "e": False}


def test_item_table_matching_no_log_item_is_an_error(tiny_files, tmp_path):
    from twotower.errors import DataError

    tiny_files["items"].write_text("item_id,author,genres,year\nX1,x,,\nX2,y,,\n")
    with pytest.raises(DataError, match=r"items.csv: none of its 2 item ids is in the log.*'X1'.*ItemSchema.item_id"):
        prepare_files(tiny_files["log"], tmp_path / "d", tiny_config(), items_path=tiny_files["items"])
    tiny_files["users"].write_text("user_id,gender,age\n1,F,20\n")
    with pytest.raises(DataError, match=r"users.csv: none of its 1 user ids is in the log"):
        prepare_files(tiny_files["log"], tmp_path / "d", tiny_config(), users_path=tiny_files["users"])


def test_duplicate_events_are_counted_kept_and_warned(tmp_path, caplog):
    from twotower.data import PrepareConfig, build

    users = ["u1", "u1", "u1", "u1", "u2", "u1", "u2", "u2", "u3"]
    items = ["a", "b", "a", "a", "a", "b", "a", "a", "a"]
    ts = [5, 5, 5, 6, 5, 7, 5, 5, 5]  # u1: a@5 twice (b@5 in between), a@6, b@7; u2: a@5 three times
    with caplog.at_level("WARNING", logger="twotower.data.prepare"):
        m = build(_events(users, items, ts), None, None, PrepareConfig(), tmp_path / "d")
    assert m["duplicate_events"] == 3 and m["num_events"] == 9
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["duplicate_events"] == 3
    assert "3 events repeat an earlier event's (user, item, timestamp); they are kept" in caplog.text


def test_empty_splits_are_warned_about(tmp_path, caplog):
    from twotower.data import PrepareConfig, build

    users = [f"u{i // 2}" for i in range(40)]
    with caplog.at_level("WARNING", logger="twotower.data.splits"):
        m = build(_events(users, ["a", "b"] * 20, np.arange(40)), None, None, PrepareConfig(), tmp_path / "two")
    assert m["split_sizes"]["loo"]["valid"] == 0
    assert "split loo (leave-last-out): validation is empty because no user has 3 or more events" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="twotower.data.splits"):
        m = build(_events(users, ["a"] * 40, [1000] * 40), None, None, PrepareConfig(), tmp_path / "same")
    assert m["split_sizes"]["time"] == {"train": 0, "valid": 0, "test": 40}
    assert "split time (global time split): train and validation are empty" in caplog.text


@pytest.mark.parametrize("field", ["max_item_features", "max_user_features"])
def test_feature_limits_must_be_counts(field):
    with pytest.raises(ConfigError, match=rf"{field} = -1 is not allowed; it must be an integer >= 0") as e:
        PrepareConfig(**{field: -1})
    assert e.value.field == field and isinstance(e.value, ValueError)
    assert getattr(PrepareConfig(**{field: 0}), field) == 0


@pytest.mark.parametrize(
    "kwargs,field,message",
    [
        ({"num_hashes": 0}, "num_hashes", r"num_hashes = 0 is not allowed; it must be an integer in \[1, 8\]"),
        ({"num_hashes": 2.5}, "num_hashes", r"num_hashes = 2.5 is not allowed"),
        ({"max_item_features": True}, "max_item_features", r"max_item_features = True is not allowed"),
        (
            {"time_test_frac": 0.0},
            "time_test_frac",
            r"time_test_frac = 0.0 is not allowed; it must be a number in \(0, 1\)",
        ),
        ({"time_valid_frac": -0.1}, "time_valid_frac", r"time_valid_frac = -0.1 is not allowed"),
        (
            {"time_valid_frac": 0.5, "time_test_frac": 0.5},
            "time_valid_frac",
            r"time_valid_frac \+ time_test_frac = 1.0",
        ),
    ],
)
def test_prepare_config_errors_name_the_field_the_value_and_the_range(kwargs, field, message):
    """One check path for every config: a ConfigError (exit 2) whose .field the CLI maps to its flag."""
    with pytest.raises(ConfigError, match=message) as e:
        PrepareConfig(**kwargs)
    assert e.value.field == field


def test_a_damaged_dataset_is_a_clear_error_at_load(synth_data, tmp_path):
    """A truncated array or items table was an IndexError deep in training / an ArrowInvalid in evaluate."""
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    item = np.load(data / "event_item.npy")
    np.save(data / "event_item.npy", item[:-3])
    with pytest.raises(DataError, match=r"event_item.npy has .* rows, the manifest says"):
        SequenceData.load(data)
    np.save(data / "event_item.npy", item)
    (data / "event_ts.npy").write_bytes((data / "event_ts.npy").read_bytes()[:100])
    with pytest.raises(DataError, match="event_ts.npy is unreadable"):
        SequenceData.load(data)
    shutil.copy(synth_data / "event_ts.npy", data / "event_ts.npy")
    ds = SequenceData.load(data)
    (data / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="items.parquet is unreadable"):
        ds.item_ids()


def test_importing_the_data_package_loads_no_preparation_code():
    """The service imports twotower.data (SequenceData); the writer, encoders and readers must stay out."""
    import subprocess
    import sys

    code = (
        "import sys, twotower.data, twotower.data.dataset\n"
        "from twotower.data import SequenceData, PrepareConfig, LogSchema\n"
        "bad = [m for m in ('prepare', 'writer', 'encoding', 'readers') if 'twotower.data.' + m in sys.modules]\n"
        "assert not bad, bad\n"
        "from twotower.data import prepare_files\n"
        "assert 'twotower.data.prepare' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_partitioned_parquet_directory_prepares_like_the_one_file(tmp_path):
    """A hive-partitioned directory (Spark's layout: part=NN/*.parquet, _SUCCESS, hidden files) is read as
    one log, in sorted path order, and gives the dataset the single file gives."""
    import pyarrow.parquet as pq

    from twotower.data import LogSchema
    from twotower.data.synth import generate

    generate(80, 50, 3000, tmp_path / "log.parquet", seed=3, progress=False)
    table = pq.read_table(tmp_path / "log.parquet")
    logdir = tmp_path / "logdir"
    for p, lo in enumerate(range(0, table.num_rows, 700)):  # contiguous chunks: the file's order is kept
        (logdir / f"part={p:02d}").mkdir(parents=True)
        pq.write_table(table.slice(lo, 700), logdir / f"part={p:02d}" / "data.parquet")
    (logdir / "_SUCCESS").write_text("")
    pq.write_table(table.slice(0, 5), logdir / "part=00" / ".tmp-attempt.parquet")  # hidden: not part of the log
    cfg = PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface"))
    prepare_files(tmp_path / "log.parquet", tmp_path / "a", cfg)
    prepare_files(logdir, tmp_path / "b", cfg)
    one, many = SequenceData.load(tmp_path / "a"), SequenceData.load(tmp_path / "b")
    assert many.num_events == one.num_events == table.num_rows
    for name in ("user_offsets", "event_item", "event_ts", "event_actions", "event_surface", "split_loo", "item_hash"):
        assert np.array_equal(getattr(many, name), getattr(one, name)), name
    assert many.manifest["source"] == str(logdir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files"):
        prepare_files(tmp_path / "empty", tmp_path / "c", cfg)
