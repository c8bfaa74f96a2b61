import json
import logging

import numpy as np
import pytest
import torch
from conftest import small_run_config
from safetensors.torch import load_file

from twotower.data import SequenceData
from twotower.errors import CheckpointError
from twotower.evaluate import evaluate_model, evaluate_popularity
from twotower.features import Featurizer
from twotower.train.batches import WindowBatches, plan_epoch
from twotower.train.config import TrainConfig
from twotower.train.load import load_run
from twotower.train.metrics_log import MetricsLog
from twotower.train.trainer import Trainer


def weights(run):
    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def test_batch_plan_covers_each_window_once_within_budget():
    lengths = np.random.default_rng(0).integers(1, 50, 500)
    batches = plan_epoch(lengths, 256, seed=1, epoch=3)
    idx = np.concatenate(batches)
    assert sorted(idx.tolist()) == list(range(500))
    assert all(len(b) * lengths[b].max() <= 256 or len(b) == 1 for b in batches)
    again = plan_epoch(lengths, 256, seed=1, epoch=3)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = plan_epoch(lengths, 256, seed=1, epoch=4)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))


def test_training_learns_structure(synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=4, lr=3e-3, eval_users=0)
    tr = Trainer(data, cfg, tmp_path / "run")
    before = evaluate_model(tr.model, tr.feat, "loo", "valid")
    tr.fit(progress=False)
    model, _, version = load_run(tmp_path / "run")
    after = evaluate_model(model, Featurizer(data, cfg.model), "loo", "valid")
    pop = evaluate_popularity(data, "loo", "valid")
    assert after["all/hr@10"] > before["all/hr@10"] + 0.05
    assert after["all/hr@10"] > pop["all/hr@10"]
    assert len(version) == 16
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert any(",valid,filtered/ndcg@10," in r for r in rows) and any(",train,loss," in r for r in rows)


@pytest.mark.parametrize(
    "negatives,logq",
    [(["in_batch", "uniform"], "streaming"), (["uniform"], "exact"), (["full"], "none"), (["in_batch"], "exact")],
)
def test_every_negative_strategy_trains(synth_data, tmp_path, negatives, logq):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, negatives=negatives, logq=logq, eval_every=0)
    s = Trainer(data, cfg, tmp_path / "r").fit(progress=False)
    assert s["step"] == s["steps_per_epoch"] and np.isfinite(s["examples_per_s"])


@pytest.mark.parametrize("negatives", [["in_batch", "uniform"], ["in_batch"]])
def test_fused_loss_equals_reference_pipeline_in_training(synth_data, tmp_path, negatives):
    """On a real batch, the fused candidate softmax and the transform pipeline give the same loss and grads."""
    data = SequenceData.load(synth_data)
    tr = Trainer(data, small_run_config(negatives=negatives), tmp_path / "r")
    tr.model.eval()  # no dropout: both passes must see the same network
    batch = WindowBatches(tr.feat, tr.windows, plan_epoch(tr.lengths, 512, 0, 0))[0]
    assert tr.task.fused  # in-batch negatives: the fused path is the default
    grads = []
    for fused in (True, False):
        state = tr.task.generator.get_state()
        tr.model.zero_grad()
        tr.task.fused = fused
        loss = tr.loss(*batch)[0].loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}))
        tr.task.generator.set_state(state)  # the same uniform negatives for both
    (la, ga), (lb, gb) = grads
    assert torch.allclose(la, lb, atol=1e-5)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6), n


class StepClock:
    """A clock that moves ``dt`` seconds each time it is read (the trainer reads it about once per step)."""

    def __init__(self, dt: float):
        self.t, self.dt = 0.0, dt

    def __call__(self) -> float:
        self.t += self.dt
        return self.t


def metric_rows(run) -> list[list[str]]:
    """metrics.csv without its wall-clock columns (time, and the examples/s value)."""
    rows = [r.split(",")[1:] for r in (run / "metrics.csv").read_text().splitlines()]
    return [r[:-1] if r[3] == "examples_per_s" else r for r in rows]


@pytest.mark.parametrize("kill_at", [7, "after_epoch", "time"])
def test_resume_equals_uninterrupted(synth_data, tmp_path, kill_at):
    """2 epochs straight == hard kill (no save at the kill) + resume from the last checkpoint, bit for bit.

    "time": the checkpoint is a mid-epoch one the clock triggered (every 30 s, the clock moving 10 s a step).
    """
    data = SequenceData.load(synth_data)
    by_time = kill_at == "time"
    cfg = small_run_config(epochs=2, checkpoint_every=0 if by_time else 3, checkpoint_every_s=30.0 if by_time else 0)
    Trainer(data, cfg, tmp_path / "straight", clock=StepClock(10.0)).fit(progress=False)
    steps_per_epoch = Trainer(data, cfg, tmp_path / "probe").steps_per_epoch
    stop = {7: 7, "after_epoch": steps_per_epoch + 1, "time": 5}[kill_at]
    assert stop < 2 * steps_per_epoch
    Trainer(data, cfg, tmp_path / "resumed", clock=StepClock(10.0)).fit(stop_after_steps=stop, progress=False)
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] < stop  # we really resume from an earlier checkpoint and replay steps
    if by_time:  # read at the start and after steps 1, 2, 3: 30 s had passed, a checkpoint mid-epoch 0
        assert (state["epoch"], state["batch"], state["step"]) == (0, 3, 3)
    Trainer(data, cfg, tmp_path / "resumed", resume=True, clock=StepClock(10.0)).fit(progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics.csv: one header, and every row once, as in the uninterrupted run (the replayed steps' rows were
    # dropped at the resume and logged again)
    assert metric_rows(tmp_path / "resumed") == metric_rows(tmp_path / "straight")
    assert metric_rows(tmp_path / "straight")[0] == ["epoch", "step", "kind", "name", "value"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_says_so(synth_data, tmp_path):
    data, run = SequenceData.load(synth_data), tmp_path / "r"
    Trainer(data, small_run_config(epochs=1), run)  # set up (config.json, data_path.txt), then "killed"
    (run / "metrics.csv").write_text("")  # the empty file such a kill leaves
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint.*--overwrite instead of --resume"):
        Trainer(data, small_run_config(epochs=1), run, resume=True)
    s = Trainer(data, small_run_config(epochs=1, eval_every=0), run, overwrite=True).fit(progress=False)
    assert s["step"] > 0 and (run / "metrics.csv").read_text().startswith("time,epoch,step,kind,name,value")


def test_checkpoint_errors_are_clear(tmp_path, synth_data):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_run(tmp_path)
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, eval_every=0, checkpoint_every=1)
    Trainer(data, cfg, tmp_path / "r").fit(stop_after_steps=1, progress=False)
    f = tmp_path / "r" / "checkpoints" / "last" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_run(tmp_path / "r", which="last")


@pytest.mark.parametrize(
    "model_opts",
    [
        {"causal": False},
        {"pooling": "mean"},
        {"positions": "learned+time"},
        {"user_token": False},
        {"causal": False, "user_token": False},
    ],
)
def test_model_options_train(synth_data, tmp_path, model_opts):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, eval_users=50)
    for k, v in model_opts.items():
        setattr(cfg.model, k, v)
    s = Trainer(data, cfg, tmp_path / "r").fit(progress=False)
    assert s["examples"] > 0 and 0 <= s["best"] <= 1
    if model_opts.get("causal") is False:  # one target per window, not one per position
        assert s["examples"] <= len(data.train_windows("loo", cfg.model.max_len))


def test_committed_configs_load():
    from pathlib import Path

    from twotower import config as cfgmod
    from twotower.train.config import RunConfig

    for f in sorted(Path(__file__).parent.parent.glob("configs/*.toml")):
        cfg = cfgmod.load(RunConfig, f)
        assert cfg.model.dim > 0 and cfg.train.epochs > 0


# --- the run directory, resume, and bad input ------------------------------------------------------------------


def prepared(tmp_path, events_per_user: int, users: int = 20):
    """A prepared log where every user has exactly ``events_per_user`` events."""
    from twotower.data import prepare_files

    rows = [f"u{u},i{(u * 7 + k) % 30},{1000 + 10 * u + k}" for u in range(users) for k in range(events_per_user)]
    log = tmp_path / f"log{events_per_user}.csv"
    log.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    prepare_files(log, tmp_path / f"data{events_per_user}")
    return SequenceData.load(tmp_path / f"data{events_per_user}")


def test_fresh_training_refuses_a_directory_holding_a_run(synth_data, tmp_path):
    from twotower.errors import OutputError

    data, run = SequenceData.load(synth_data), tmp_path / "r"
    cfg = small_run_config(epochs=1, eval_every=0)
    Trainer(data, cfg, run).fit(stop_after_steps=2, progress=False)
    (run / "eval_test.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(
        OutputError, match="already holds a run; continue it with --resume, discard it with --overwrite"
    ):
        Trainer(data, small_run_config(epochs=3, eval_every=0), run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched
    Trainer(data, cfg, run, overwrite=True).fit(progress=False)
    assert not (run / "eval_test.json").exists()  # the old run's files are gone, not mixed in
    assert (
        sum(",train,loss," in r and r.split(",")[2] == "5" for r in (run / "metrics.csv").read_text().splitlines()) == 1
    )
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="holds no twotower run"):
        Trainer(data, cfg, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    # a project folder that happens to have a checkpoints/ directory is not a run: --overwrite refuses it
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "resnet.pt").write_text("weights")
    with pytest.raises(OutputError, match=r"holds more than a twotower run \(checkpoints/resnet.pt, notes.txt\)"):
        Trainer(data, cfg, other, overwrite=True)
    assert (other / "notes.txt").is_file() and (other / "checkpoints" / "resnet.pt").is_file()
    # and a run directory that contains the dataset itself is never cleared
    import shutil

    shutil.copytree(synth_data, run / "data_inside")
    (run / "data_inside").rename(run / "eval_data.json")  # even under a name a run writes
    with pytest.raises(OutputError, match="contains the dataset"):
        Trainer(SequenceData.load(run / "eval_data.json"), cfg, run, overwrite=True)
    assert (run / "eval_data.json" / "manifest.json").is_file()


def test_resume_uses_the_saved_config_and_refuses_changes_that_alter_training(synth_data, tmp_path):
    from twotower.errors import ConfigError
    from twotower.train.run import resume_config

    data, run = SequenceData.load(synth_data), tmp_path / "r"
    cfg = small_run_config(epochs=2, eval_every=0, checkpoint_every=2)
    Trainer(data, cfg, run).fit(stop_after_steps=3, progress=False)
    saved = resume_config(run)
    assert saved.model.dim == 16 and saved.train.batch_tokens == 512  # not the RunConfig() defaults
    changed = small_run_config(epochs=2, eval_every=0, checkpoint_every=2, batch_tokens=256)
    changed.model.dim = 32
    with pytest.raises(ConfigError, match=r"changes model.dim \(16 -> 32\), train.batch_tokens \(512 -> 256\)"):
        resume_config(run, changed)
    with pytest.raises(ConfigError, match="train.batch_tokens"):  # the library guards it too
        Trainer(data, small_run_config(epochs=2, eval_every=0, checkpoint_every=2, batch_tokens=256), run, resume=True)
    longer = resume_config(run, small_run_config(epochs=3, eval_every=0, checkpoint_every=2, time_budget_s=100.0))
    s = Trainer(data, longer, run, resume=True).fit(progress=False)
    assert s["epoch"] == 3 and s["step"] == 3 * s["steps_per_epoch"]


def test_resume_refuses_another_dataset(synth_data, tiny_data, tmp_path):
    from twotower.errors import DataError

    run = tmp_path / "r"
    cfg = small_run_config(epochs=1, eval_every=0, checkpoint_every=1)
    Trainer(SequenceData.load(synth_data), cfg, run).fit(stop_after_steps=1, progress=False)
    with pytest.raises(DataError, match="was trained on another dataset"):
        Trainer(
            SequenceData.load(tiny_data), small_run_config(epochs=1, eval_every=0, checkpoint_every=1), run, resume=True
        )


def test_a_run_stopped_by_its_time_budget_continues_when_the_budget_is_raised(synth_data, tmp_path):
    data, run = SequenceData.load(synth_data), tmp_path / "r"
    s = Trainer(data, small_run_config(epochs=2, eval_every=0, time_budget_s=1e-9), run).fit(progress=False)
    assert s["done"] and s["stop_reason"] == "time_budget" and s["step"] == 1
    same = Trainer(data, small_run_config(epochs=2, eval_every=0, time_budget_s=1e-9), run, resume=True)
    assert same.fit(progress=False)["step"] == 1  # nothing raised: stays stopped
    s = Trainer(data, small_run_config(epochs=2, eval_every=0, time_budget_s=0.0), run, resume=True).fit(progress=False)
    assert not s["done"] and s["epoch"] == 2 and s["step"] == 2 * s["steps_per_epoch"]


def test_an_early_stopped_run_continues_when_epochs_are_raised(synth_data, tmp_path):
    data, run = SequenceData.load(synth_data), tmp_path / "r"
    frozen = dict(lr=1e-12, embedding_lr=1e-12, patience=1, eval_users=50)  # no change -> no improvement
    s = Trainer(data, small_run_config(epochs=4, **frozen), run).fit(progress=False)
    assert s["done"] and s["stop_reason"] == "early_stop" and s["epoch"] == 2
    assert Trainer(data, small_run_config(epochs=4, **frozen), run, resume=True).fit(progress=False)["epoch"] == 2
    s = Trainer(data, small_run_config(epochs=6, **frozen), run, resume=True).fit(progress=False)
    assert s["epoch"] == 3 and s["stop_reason"] == "early_stop"  # patience started over: one more epoch


def test_empty_splits_are_clear_errors_before_training(tmp_path):
    from twotower.errors import DataError

    two = prepared(tmp_path, 2)  # leave-last-out: one training and one test event per user, no validation
    with pytest.raises(DataError, match=r'no validation targets under split \'loo\'.*set train.split = "time"'):
        Trainer(two, small_run_config(epochs=1), tmp_path / "r")
    s = Trainer(two, small_run_config(epochs=1, eval_every=0), tmp_path / "r2").fit(progress=False)
    assert s["step"] > 0 and (tmp_path / "r2" / "checkpoints" / "last").is_dir()
    model, cfg, _ = load_run(tmp_path / "r2")
    empty = evaluate_model(model, Featurizer(two, cfg.model), "loo", "valid")  # reports, does not crash
    assert empty["num_users"] == 0 and np.isnan(empty["all/hr@10"])
    with pytest.raises(DataError, match="no training events under split 'loo' after holding out 99%.*holdout_users"):
        Trainer(two, small_run_config(epochs=1, eval_every=0, holdout_users=0.99), tmp_path / "r3")


def test_more_hashes_than_the_dataset_has_is_a_config_error(synth_data, tmp_path):
    from twotower.errors import ConfigError

    cfg = small_run_config(epochs=1)
    cfg.model.num_hashes = 3
    with pytest.raises(ConfigError, match=r"model.num_hashes = 3 but dataset .* was prepared with 2.*--num-hashes 3"):
        Trainer(SequenceData.load(synth_data), cfg, tmp_path / "r")


def test_a_kill_between_the_checkpoint_renames_loses_nothing(synth_data, tmp_path):
    """The state a kill mid-save leaves (no `last`, the previous one as `.last.old`, a half tmp dir) resumes."""
    data, run = SequenceData.load(synth_data), tmp_path / "r"
    cfg = small_run_config(epochs=1, eval_every=0, checkpoint_every=2)
    Trainer(data, cfg, run).fit(stop_after_steps=3, progress=False)
    ckdir = run / "checkpoints"
    (ckdir / "last").rename(ckdir / ".last.old")  # the first rename of save() happened, the second did not
    (ckdir / ".last.tmp-99999").mkdir()  # and an earlier kill left a half-written temporary copy
    (ckdir / ".last.tmp-99999" / "model.safetensors").write_bytes(b"half")
    assert load_run(run, which="last")[2]  # readable
    tr = Trainer(data, cfg, run, resume=True)
    assert tr.state["step"] == 2
    tr.fit(progress=False)
    assert sorted(p.name for p in ckdir.iterdir()) == ["last"]  # stale copies cleaned by the next save


def test_metrics_rows_reach_the_disk_as_they_are_logged(tmp_path):
    from twotower.train.metrics_log import MetricsLog

    f = tmp_path / "metrics.csv"
    m = MetricsLog(tmp_path)
    m.scalar(0, 5, "train", "loss", 1.5)
    assert f.read_text().splitlines()[1].endswith(",0,5,train,loss,1.5")  # a kill -9 now loses nothing
    m.close()
    f.write_text(f.read_text() + "1700000000.0,0,10,tr")  # a row cut off by a kill mid-write
    m = MetricsLog(tmp_path)
    assert m.rows == 1 and f.read_text().splitlines()[-1].endswith(",0,5,train,loss,1.5")
    m.close()
    f.write_text("1700000000.0,0,5,train,loss,1.5\r\n")  # rows without a header (a resume after an empty file)
    MetricsLog(tmp_path, keep_rows=0).close()
    assert f.read_text().splitlines() == ["time,epoch,step,kind,name,value"]


def test_cosine_follows_the_time_budget_when_it_ends_first():
    from twotower.train.params import lr_lambda

    tc = TrainConfig(warmup_steps=10, min_lr_ratio=0.05)
    used = [0.0]
    f = lr_lambda(tc, total_steps=10_000, budget_used=lambda: used[0])
    plain = lr_lambda(tc, total_steps=10_000)
    assert f(5) == plain(5) == 0.6  # the warm-up is by steps either way
    assert f(500) == plain(500) > 0.99  # budget barely used: the step cosine
    used[0] = 0.5
    assert f(500) == pytest.approx(0.05 + 0.95 * 0.5)  # half the budget: half-way down the cosine
    used[0] = 1.2
    assert f(500) == pytest.approx(0.05) and plain(500) > 0.99  # budget spent: the floor, whatever the steps


def test_progress_lines_without_a_progress_bar(synth_data, tmp_path, caplog):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, progress_every_s=1e-6, eval_every=0, time_budget_s=60.0)
    with caplog.at_level(logging.INFO, logger="twotower.train.trainer"):
        Trainer(data, cfg, tmp_path / "r").fit(progress=False)
    lines = [r.getMessage() for r in caplog.records if "examples/s" in r.getMessage()]
    assert len(lines) >= 2 and "of 60 s budget" in lines[0] and "epoch 1/1, batch" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="twotower.train.trainer"):
        Trainer(data, cfg, tmp_path / "r2").fit(progress=True)  # the bar says it: no log lines
    assert not [r for r in caplog.records if "examples/s" in r.getMessage()]


def test_early_stopping_waits_for_its_share_of_the_budget_when_the_cosine_follows_it(synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=3, patience=1, time_budget_s=1e6)  # a budget that never binds
    tr = Trainer(data, cfg, tmp_path / "r")
    tr.state["best"] = 2.0  # no evaluation can improve on it
    tr.metrics = MetricsLog(tmp_path / "r", 0, 0)
    tr._validate(0, 1.0)
    assert not tr.state["done"] and tr.state["bad_evals"] == 0  # 0 % of the budget: does not count
    tr.state["train_seconds"] = 0.6e6
    tr._validate(1, 1.0)
    assert tr.state["done"] and tr.state["stop_reason"] == "early_stop"
    cfg.train.patience_from = 0.8  # the no-config default: 60 % of the budget does not count yet, 85 % does
    tr3 = Trainer(data, cfg, tmp_path / "r3")
    tr3.state["best"], tr3.metrics = 2.0, MetricsLog(tmp_path / "r3", 0, 0)
    tr3.state["train_seconds"] = 0.6e6
    tr3._validate(0, 1.0)
    assert not tr3.state["done"] and tr3.state["bad_evals"] == 0
    tr3.state["train_seconds"] = 0.85e6
    tr3._validate(1, 1.0)
    assert tr3.state["done"] and tr3.state["stop_reason"] == "early_stop"
    cfg.train.lr_follows_budget = False  # a step cosine: every evaluation counts, as before
    tr2 = Trainer(data, cfg, tmp_path / "r2")
    tr2.state["best"], tr2.metrics = 2.0, MetricsLog(tmp_path / "r2", 0, 0)
    tr2._validate(0, 1.0)
    assert tr2.state["done"]
