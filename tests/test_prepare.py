import json

import numpy as np
import pytest
from conftest import tiny_config

from twotower.data import SequenceData, prepare_files
from twotower.data import prepare as prep
from twotower.data.prepare import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID


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

    monkeypatch.setattr(prep.np, "save", failing_save)
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
    from twotower.data import DataError

    with pytest.raises(DataError, match="run `twotower prepare`"):
        SequenceData.load(tmp_path)
