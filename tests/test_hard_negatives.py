"""Mined hard negatives: the mining job against a slow reference, its resume and refusals, and training with
them (the hard columns' loss against a loop, the staged schedule, the version checks)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_run_config

from twotower.data import SequenceData
from twotower.errors import ArtifactError, ConfigError, OutputError
from twotower.features import Featurizer
from twotower.jobs.mine import chunks, draw_window, mine_negatives
from twotower.layout import SPLIT_TRAIN
from twotower.train.batches import training_windows
from twotower.train.hard_negatives import MANIFEST_FILE, MineConfig, MinedNegatives
from twotower.train.load import load_run
from twotower.train.negatives import InBatchNegatives, MixedNegatives, UniformNegatives
from twotower.train.task import RetrievalTask, Targets
from twotower.train.trainer import Trainer


@pytest.fixture(scope="module")
def base_run(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hard") / "base"
    Trainer(SequenceData.load(synth_data), small_run_config(epochs=1), out).fit(progress=False)
    return out


def test_draw_window_takes_ranks_after_the_exclusions():
    scores = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    excluded = torch.zeros(1, 10, dtype=torch.bool)
    excluded[0, [1, 3]] = True  # ranks after removal: 0, 2, 4, 5, 6, 7, 8, 9
    cfg = MineConfig(rank_from=3, rank_to=5, count=3)
    items, window = draw_window(scores, excluded, cfg, torch.Generator().manual_seed(0))
    assert sorted(items[0].tolist()) == [4, 5, 6] and int(window[0]) == 3
    # a window reaching past the catalogue: the tail is -1 and the window counts only what exists
    items, window = draw_window(scores, excluded, MineConfig(rank_from=7, rank_to=12, count=4), torch.Generator())
    assert sorted(items[0].tolist()) == [-1, -1, 8, 9] and int(window[0]) == 2
    with pytest.raises(ConfigError, match="count"):
        MineConfig(rank_from=5, rank_to=6, count=3)


def test_mined_negatives_are_in_the_rank_window_and_never_false_negatives(base_run, synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    cfg = MineConfig(rank_from=11, rank_to=40, count=5, seed=3)
    m = mine_negatives(base_run, tmp_path / "mined", cfg, data, progress=False)
    model, rc, version = load_run(base_run)
    assert m["model_version"] == version and m["examples"] > 0
    mined = MinedNegatives.load(tmp_path / "mined")
    train = data.split("loo") == SPLIT_TRAIN
    user_of = data.user_of_event()
    # every training target the trainer makes is mined
    n_train = np.bincount(user_of[train], minlength=data.num_users)
    assert m["examples"] == int(train.sum())  # with the user token every training event is a target
    # slow reference on a sample of rows: the user vector of the history before the row, all items scored
    feat = Featurizer(data, rc.model)
    with torch.no_grad():
        items = model.encode_items(feat.items())
    rng = np.random.default_rng(0)
    for r in rng.choice(mined.rows.numpy(), 25, replace=False):
        u = int(user_of[r])
        first = int(data.user_offsets[u])
        start = max(first, r - rc.model.max_len)
        # the trainer's query for row r: the window holding r, history = the window's events before r
        windows = training_windows(data, "loo", rc.model.max_len, 0.0)
        w = windows[(windows[:, 0] == u) & (windows[:, 1] <= r) & (windows[:, 2] > r)][0]
        start = int(w[1])
        with torch.no_grad():
            q = model.encode_user(feat.users(np.array([u]), np.array([start]), np.array([r])))[0]
        seen = set(data.event_item[first : first + n_train[u]].tolist())
        ranked = [i for i in torch.argsort(items @ q, descending=True).tolist() if i not in seen]
        window = set(ranked[cfg.rank_from - 1 : cfg.rank_to])
        got, prob = mined.lookup(torch.tensor([r]))
        got = [i for i in got[0].tolist() if i >= 0]
        assert len(got) == cfg.count and set(got) <= window, (r, got)
        assert not set(got) & seen
        assert math.isclose(float(prob[0, 0]), cfg.count / len(window), rel_tol=1e-6)


def test_mining_resumes_after_a_kill_and_refuses_other_parts(base_run, synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    cfg = MineConfig(rank_from=5, rank_to=30, count=4)
    whole = tmp_path / "whole"
    mine_negatives(base_run, whole, cfg, data, progress=False, chunk_tokens=1000)
    cut = tmp_path / "cut"
    n_chunks = len(chunks(training_windows(data, "loo", 20, 0.0), 1000))
    assert n_chunks >= 3  # so the kill lands mid-way
    assert mine_negatives(base_run, cut, cfg, data, progress=False, stop_after_chunks=2, chunk_tokens=1000) == {}
    assert not (cut / MANIFEST_FILE).exists() and len(list((cut / ".parts").glob("part-*"))) == 2
    with pytest.raises(ArtifactError, match="another mining job"):  # other config, same parts directory
        mine_negatives(base_run, cut, MineConfig(rank_from=5, rank_to=30, count=3), data, progress=False)
    mine_negatives(base_run, cut, cfg, data, progress=False, chunk_tokens=1000)  # resumes
    a, b = MinedNegatives.load(whole), MinedNegatives.load(cut)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.items, b.items) and torch.equal(a.prob, b.prob)
    with pytest.raises(OutputError, match="--overwrite"):
        mine_negatives(base_run, cut, cfg, data, progress=False)


def _task(hard, **kw):
    sources = [InBatchNegatives(None), UniformNegatives(50, 8)]
    return RetrievalTask(MixedNegatives(sources), temperature=0.5, hard=hard, **kw)


def _hard_file(rows, items, window):
    return MinedNegatives(np.array(rows), np.array(items), np.array(window), {"model_version": "m"})


@pytest.mark.parametrize("with_prior", [False, True])
def test_hard_columns_join_the_softmax_once_each(with_prior):
    """The task's loss with mined negatives equals a loop over each row's candidate set: shared candidates,
    plus the row's mined items that are neither its positive nor already shared; with an item prior
    (``item_offset``) every column of item i, shared or mined or positive, carries its offset."""
    offset = torch.linspace(-1.5, 1.0, 50, dtype=torch.float64) if with_prior else None
    g = torch.Generator().manual_seed(0)
    table = F.normalize(torch.randn(50, 4, generator=g, dtype=torch.float64), dim=-1)
    pos = torch.tensor([3, 7, 3, 20])
    rows = torch.tensor([10, 11, 12, 13])
    hard = _hard_file([10, 11, 13], [[40, 41, 7], [3, 42, -1], [43, 44, 45]], [6, 6, 3])
    q = F.normalize(torch.randn(4, 4, generator=g, dtype=torch.float64), dim=-1)
    for fused in (True, False):
        task = _task(hard, fused=fused, logq=False, seed=5, item_offset=offset)
        targets = Targets(pos, None, lambda ids: table[ids], rows)
        got = task(q, targets).loss
        shared = _task(None, fused=fused, logq=False, seed=5).negatives.sample(pos, torch.Generator().manual_seed(5))
        losses = []
        for t in range(4):
            cols = set(shared.tolist()) | {int(pos[t])}
            mined = {10: [40, 41, 7], 11: [3, 42], 13: [43, 44, 45]}.get(int(rows[t]), [])
            cols |= {i for i in mined if i != int(pos[t])}
            s = {i: float(q[t] @ table[i]) / 0.5 + (float(offset[i]) if with_prior else 0.0) for i in cols}
            losses.append(-(s[int(pos[t])] - math.log(sum(math.exp(v) for v in s.values()))))
        assert abs(float(got) - sum(losses) / 4) < 1e-9, fused
        plain = _task(None, fused=fused, logq=False, seed=5, item_offset=offset)(q, targets).loss
        assert float(got) > float(plain)  # the extra negatives cost something
        off = _task(hard, fused=fused, logq=False, seed=5, item_offset=offset)
        off.hard_active = False  # the staged schedule before hard_start: the plain loss
        assert float(off(q, targets).loss) == float(plain)


def test_training_with_mined_negatives_records_their_version_and_refuses_a_mismatch(base_run, synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    mined = tmp_path / "mined"
    m = mine_negatives(base_run, mined, MineConfig(rank_from=5, rank_to=40, count=4), data, progress=False)
    cfg = small_run_config(epochs=2, hard_negatives=str(mined), hard_start=0.5)
    tr = Trainer(data, cfg, tmp_path / "run")
    seen = []
    step = tr.step

    def spy(*a, **k):
        out = step(*a, **k)
        seen.append(tr.task.hard_active)
        return out

    tr.step = spy
    summary = tr.fit(progress=False)
    assert summary["epoch"] == 2 and not seen[0] and seen[-1]  # staged: off in the first half, on after
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["hard_negatives_model"] == m["model_version"]
    bad = small_run_config(hard_negatives=str(mined), hard_negatives_model="0123456789abcdef")
    with pytest.raises(ArtifactError, match="mined with model"):
        Trainer(data, bad, tmp_path / "run2")
    with pytest.raises(ArtifactError, match="mine-negatives"):
        Trainer(data, small_run_config(hard_negatives=str(tmp_path / "nothing")), tmp_path / "run3")
    other = json.loads((mined / MANIFEST_FILE).read_text())
    other["dataset"] = "another"
    (mined / MANIFEST_FILE).write_text(json.dumps(other))
    with pytest.raises(ArtifactError, match="mined on dataset"):
        Trainer(data, small_run_config(hard_negatives=str(mined)), tmp_path / "run4")
