import json

import numpy as np
import pytest
import torch
from conftest import small_run_config
from safetensors.torch import load_file

from twotower.data import SequenceData
from twotower.evaluate import evaluate_model, evaluate_popularity
from twotower.features import Featurizer
from twotower.train.batches import WindowBatches, plan_epoch
from twotower.train.checkpoint import CheckpointError
from twotower.train.loop import Trainer, load_model


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
    model, _, version = load_model(tmp_path / "run")
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
    grads = []
    for fused in (True, False):
        state = tr.gen.get_state()
        tr.model.zero_grad()
        loss, _, _ = tr.compute_loss(*batch, fused=fused)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}))
        tr.gen.set_state(state)  # the same uniform negatives for both
    (la, ga), (lb, gb) = grads
    assert torch.allclose(la, lb, atol=1e-5)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6), n


@pytest.mark.parametrize("kill_at", [7, "after_epoch"])
def test_resume_equals_uninterrupted(synth_data, tmp_path, kill_at):
    """2 epochs straight == hard kill (no save at the kill) + resume from the last checkpoint, bit for bit."""
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=2, checkpoint_every=3)
    Trainer(data, cfg, tmp_path / "straight").fit(progress=False)
    steps_per_epoch = Trainer(data, cfg, tmp_path / "probe").steps_per_epoch
    stop = kill_at if kill_at != "after_epoch" else steps_per_epoch + 1
    assert stop < 2 * steps_per_epoch
    Trainer(data, cfg, tmp_path / "resumed").fit(stop_after_steps=stop, progress=False)
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] < stop  # we really resume from an earlier checkpoint and replay steps
    Trainer(data, cfg, tmp_path / "resumed", resume=True).fit(progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_errors_are_clear(tmp_path, synth_data):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path)
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, eval_every=0, checkpoint_every=1)
    Trainer(data, cfg, tmp_path / "r").fit(stop_after_steps=1, progress=False)
    f = tmp_path / "r" / "checkpoints" / "last" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(tmp_path / "r", which="last")


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
    from twotower.train.loop import RunConfig

    for f in sorted(Path(__file__).parent.parent.glob("configs/*.toml")):
        cfg = cfgmod.load(RunConfig, f)
        assert cfg.model.dim > 0 and cfg.train.epochs > 0
