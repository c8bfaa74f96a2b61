"""No-config defaults: rules over the dataset's shape, each choice stated."""

import dataclasses

import numpy as np

from twotower.cli import main
from twotower.data import SequenceData
from twotower.train.auto import DataShape, auto_config, data_shape
from twotower.train.config import RunConfig


def test_shape_is_measured_on_the_training_split_only(synth_data):
    data = SequenceData.load(synth_data)
    s = data_shape(data)
    assert s.users == data.num_users and s.items == data.num_items
    held_out = sum(len(data.eval_targets("loo", which)[0]) for which in ("valid", "test"))
    assert s.train_events == data.num_events - held_out  # loo: at most one valid and one test event per user
    assert 0 < s.history_p50 <= s.history_p90


def test_rules_follow_the_shape(synth_data, monkeypatch):
    data = SequenceData.load(synth_data)
    cfg, why = auto_config(data, time_budget_s=42)
    assert isinstance(cfg, RunConfig) and cfg.train.time_budget_s == 42 and not cfg.model.online_head
    assert len(why) >= 5 and any("max_len" in line for line in why)
    base = data_shape(data)
    shapes = {
        "dense": dataclasses.replace(base, train_events=base.items * 100, history_p90=1000.0),
        "sparse": dataclasses.replace(base, items=500_000, train_events=1_000_000, history_p90=12.0),
    }
    got = {}
    for name, shape in shapes.items():
        monkeypatch.setattr("twotower.train.auto.data_shape", lambda d, split, s=shape: s)
        got[name] = auto_config(data)[0]
    dense, sparse = got["dense"], got["sparse"]
    assert dense.model.max_len == 200 and sparse.model.max_len == 16
    assert dense.model.dropout < sparse.model.dropout
    assert dense.train.logq == "none" and sparse.train.logq == "streaming"
    assert sparse.model.item_buckets >= 4 * 500_000 and dense.model.item_buckets < sparse.model.item_buckets


def test_shape_properties():
    s = DataShape(users=10, items=4, train_events=100, history_p50=5, history_p90=9, features=0)
    assert s.events_per_item == 25
    assert np.isfinite(s.events_per_item)


def test_train_without_a_config_states_its_choices(synth_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(synth_data), "--out", str(out), "--no-progress", "--time-budget", "2",
                 "--epochs", "1"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "no --config: defaults scaled to this dataset" in text and "max_len" in text
    saved = (out / "config.json").read_text()
    assert '"online_head": false' in saved and '"time_budget_s": 2.0' in saved


def test_hybrid_flag_trains_the_servable_split(synth_data, tmp_path, capsys):
    """``--hybrid`` (no config) gives the hybrid split the service loads; with --config it is refused."""
    data = SequenceData.load(synth_data)
    cfg, why = auto_config(data, hybrid=True)
    assert cfg.model.online_head and cfg.train.encoder_loss_weight == 1.0 and cfg.train.head_fraction == 0.25
    assert any("hybrid" in line for line in why)
    out = tmp_path / "run"
    code = main(["train", "--data", str(synth_data), "--out", str(out), "--no-progress", "--time-budget", "2",
                 "--epochs", "1", "--hybrid"])  # fmt: skip
    assert code == 0 and '"online_head": true' in (out / "config.json").read_text()
    code = main(["train", "--data", str(synth_data), "--out", str(tmp_path / "r2"), "--hybrid",
                 "--config", str(out / "config.json")])  # fmt: skip
    assert code == 2 and "--hybrid" in capsys.readouterr().err
