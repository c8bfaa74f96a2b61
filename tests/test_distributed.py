"""Data-parallel training under torchrun (2 processes, gloo, CPU): one step with in-batch negatives gathered
across ranks equals the single-process step over the same global batch (unsplit and hybrid towers), and a killed
2-process run resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_run_config
from safetensors import safe_open

from twotower import config as cfgmod
from twotower.data import SequenceData
from twotower.model.checkpoint import load_model
from twotower.train.batches import WindowBatches, plan_epoch
from twotower.train.trainer import Trainer

HERE = Path(__file__).resolve().parent


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}


def step_config(**train):
    cfg = small_run_config(**{"epochs": 1, "eval_users": 0, "grad_clip": 0.0, **train})
    cfg.model.dropout = 0.0  # the ranks draw other dropout masks than one process would
    return cfg


def hybrid_step_config(**train):
    """``step_config`` for the hybrid split with what ``--hybrid`` switches on: online head, the encoder's own
    loss, the head on a sample of the targets (so head and encoder losses are means over other targets, in other
    proportions on each rank); missing states and subject items among the pseudo contexts."""
    cfg = step_config(encoder_loss_weight=1.0, head_fraction=0.5, no_state_prob=0.2, subject_prob=0.5, **train)
    cfg.model.online_head, cfg.model.state_tokens, cfg.model.context_len = True, 2, 4
    cfg.train.max_lag = 8
    return cfg


def _cat(a, b):
    """Two PseudoBatches (or their fields) concatenated along the target dimension."""
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    return type(a)(**{f.name: _cat(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)})


def union_batch(trainer: Trainer, first: np.ndarray, second: np.ndarray):
    """One process's (inputs, rows, pseudo) over two ranks' batches: the windows of both, and a hybrid's pseudo
    contexts drawn for each batch under its own key (epoch 0, global index 0 / 1) as the ranks drew them."""
    inputs, rows, _ = WindowBatches(trainer.feat, trainer.windows, [np.concatenate([first, second])])[0]
    if trainer.pseudo is None:
        return inputs, rows, None
    draws = WindowBatches(trainer.feat, trainer.windows, [first, second], trainer.pseudo, 0, 0)
    (_, _, a), (_, _, b) = draws[0], draws[1]
    pseudo = _cat(a, b)
    pseudo.batch = torch.cat([a.batch, b.batch + len(first)])  # window rows of the second batch come after
    return inputs, rows, pseudo


@pytest.fixture(scope="module")
def mined(synth_data, tmp_path_factory):
    """Hard negatives mined with a 1-epoch run's index (`twotower mine-negatives`)."""
    from twotower.jobs.mine import mine_negatives
    from twotower.train.hard_negatives import MineConfig

    out = tmp_path_factory.mktemp("ddp_mined")
    Trainer(SequenceData.load(synth_data), small_run_config(epochs=1), out / "base").fit(progress=False)
    mine_negatives(out / "base", out / "mined", MineConfig(rank_from=11, rank_to=40, count=4), progress=False)
    return out / "mined"


@pytest.mark.parametrize(
    "make_config, negatives",
    [
        (step_config, ["in_batch", "uniform"]),
        (hybrid_step_config, ["in_batch", "uniform"]),
        (step_config, ["full"]),
        (step_config, ["in_batch", "uniform", "mined"]),
    ],
    ids=["unsplit", "hybrid", "full-softmax", "mined-hard"],
)
def test_one_step_at_world_size_two_equals_the_single_process_step(synth_data, tmp_path, make_config, negatives, request):  # noqa: E501
    extra = {}
    if "mined" in negatives:  # mined hard negatives join the in-batch and uniform ones from the first step
        negatives = negatives[:-1]
        extra = {"hard_negatives": str(request.getfixturevalue("mined")), "hard_start": 0.0}
    cfg = make_config(negatives=negatives, batch_tokens=256, **extra)
    cfgmod.save(cfg, tmp_path / "config.json")
    proc = subprocess.run(
        torchrun(str(HERE / "ddp_step.py"), str(synth_data), str(tmp_path / "config.json"), str(tmp_path / "ddp.st")),
        env=env(), capture_output=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    # one process over the union of the two ranks' batches
    data = SequenceData.load(synth_data)
    trainer = Trainer(data, cfg, tmp_path / "single")
    batches = plan_epoch(trainer.lengths, cfg.train.batch_tokens, cfg.train.seed, 0)
    inputs, rows, pseudo = union_batch(trainer, batches[0], batches[1])
    assert (pseudo is not None) == cfg.model.online_head
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.step(inputs, rows, pseudo)
    assert (trainer.task.hard is not None and trainer.task.hard_active) == bool(extra)  # the mined ones took part
    with safe_open(str(tmp_path / "ddp.st"), "pt") as f:
        assert int(f.metadata()["targets"]) == stats["targets"]  # the global batch's targets, counted over ranks
        moved = []
        for name, value in trainer.model.state_dict().items():
            got = f.get_tensor(name)
            torch.testing.assert_close(got, value, atol=1e-5, rtol=0, msg=name)
            if not torch.equal(value, before[name]):
                moved.append(name)
    assert len(moved) > 5  # the step changed the towers (not a comparison of two untouched models)
    assert any(name.startswith("head.") for name in moved) == cfg.model.online_head  # ... and a hybrid's head


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw
    )


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(synth_data, tmp_path):
    cfg = step_config(epochs=3, batch_tokens=256, checkpoint_every=4)
    cfgmod.save(cfg, tmp_path / "config.json")
    train = ["-m", "twotower", "--", "train", "--data", str(synth_data), "--config", str(tmp_path / "config.json"),
             "--no-progress"]  # fmt: skip
    ref = subprocess.run(torchrun(*train, "--out", str(tmp_path / "ref")), env=env(), capture_output=True, timeout=300)
    assert ref.returncode == 0, ref.stdout.decode()[-2000:] + ref.stderr.decode()[-2000:]
    summary = json.loads((tmp_path / "ref" / "train_summary.json").read_text())
    assert summary["epoch"] == 3
    # the same run, SIGKILLed (every process) once a mid-epoch checkpoint exists, then resumed
    proc = _run(torchrun(*train, "--out", str(tmp_path / "cut")))
    state = tmp_path / "cut" / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text()).get("step", 0) >= 4:
                break
        except (OSError, ValueError):  # not written yet, or being written
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = json.loads(state.read_text())
    assert cut["step"] < summary["step"]
    again = subprocess.run(torchrun(*train, "--out", str(tmp_path / "cut"), "--resume"), env=env(),
                           capture_output=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout.decode()[-2000:] + again.stderr.decode()[-2000:]
    a, _, va = load_model(tmp_path / "ref", which="last")
    b, _, vb = load_model(tmp_path / "cut", which="last")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0, msg=name)
    # and the 2-process checkpoint resumes in one process too (another world size)
    cfg.train.epochs = 4
    one = Trainer(SequenceData.load(synth_data), cfg, tmp_path / "cut", resume=True)
    assert one.state["epoch"] == 3 and one.fit(progress=False)["epoch"] == 4


def test_the_sharded_export_equals_the_single_process_one(synth_data, tmp_path):
    from twotower.jobs.export import export_items

    Trainer(SequenceData.load(synth_data), step_config(epochs=1), tmp_path / "run").fit(progress=False)
    one = export_items(tmp_path / "run", tmp_path / "one", batch=64, progress=False)
    # a small batch so that each rank encodes several batches, interleaved
    proc = subprocess.run(
        torchrun("-m", "twotower", "--", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "two"),
                 "--batch", "64", "--no-progress"),
        env=env(), capture_output=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-3000:]
    a, b = np.load(tmp_path / "one" / "embeddings.npy"), np.load(tmp_path / "two" / "embeddings.npy")
    assert a.shape == b.shape == (one["count"], one["dim"])
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["model_version"] == one["model_version"] and two["count"] == one["count"]


def test_the_sharded_refresh_writes_the_single_process_states(synth_data, tmp_path):
    from twotower.jobs.refresh import refresh_states
    from twotower.store import open_store

    Trainer(SequenceData.load(synth_data), step_config(epochs=1), tmp_path / "run").fit(progress=False)
    one = refresh_states(tmp_path / "run", f"sqlite:///{tmp_path / 'one.db'}", batch=32, progress=False)
    proc = subprocess.run(
        torchrun("-m", "twotower", "--", "refresh-states", "--run", str(tmp_path / "run"), "--store",
                 f"sqlite:///{tmp_path / 'two.db'}", "--batch", "32", "--no-progress"),
        env=env(), capture_output=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-3000:]
    assert f"encoded {one.encoded:,} in {one.batches} batches" in proc.stdout.decode()  # rank 0 counts all ranks
    users = SequenceData.load(synth_data).user_ids().astype(str).tolist()
    shape = load_model(tmp_path / "run")[1].cached_state_shape
    with open_store(f"sqlite:///{tmp_path / 'one.db'}") as a, open_store(f"sqlite:///{tmp_path / 'two.db'}") as b:
        x, y = a.get_many(users, one.model_version, shape), b.get_many(users, one.model_version, shape)
    assert x.found.sum() == one.encoded > 0
    np.testing.assert_array_equal(x.found, y.found)
    np.testing.assert_allclose(x.states, y.states, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(x.snapshot_ts, y.snapshot_ts)
