"""The retrieval task: its state (temperature, estimators, sampler RNG) in one state_dict; parts add losses."""

import torch
import torch.nn.functional as F
from torch import nn

from twotower.train.frequency import StreamingFrequency
from twotower.train.negatives import FullCorpus, InBatchNegatives, MixedNegatives, UniformNegatives
from twotower.train.task import RetrievalTask, Targets


def make_task(seed: int = 0, **kw) -> RetrievalTask:
    sources = [InBatchNegatives(StreamingFrequency(50)), UniformNegatives(50, 8)]
    return RetrievalTask(MixedNegatives(sources), seed=seed, **kw)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    table = F.normalize(torch.randn(50, 4, generator=g), dim=-1)
    items = torch.randint(0, 50, (6,), generator=g)
    queries = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    return queries, Targets(items, None, lambda ids: table[ids])


def test_state_dict_holds_temperature_estimators_and_sampler():
    task = make_task(seed=1)
    q, t = batch()
    for _ in range(3):
        task(q, t)
        task.observe(t)
    state = task.state_dict()
    assert set(state) == {
        "log_tau",
        "negatives.sources.0.frequency.last",
        "negatives.sources.0.frequency.gap",
        "negatives.sources.0.frequency.count",
        "negatives.sources.0.frequency.step",
        "_extra_state",  # the sampler's RNG
    }
    assert int(state["negatives.sources.0.frequency.step"]) == 3
    other = make_task(seed=2)
    other.load_state_dict(state)
    assert torch.equal(other(q, t).loss, task(q, t).loss)  # same estimates, same sampled negatives


def test_fused_and_reference_paths_agree():
    q, t = batch(3)
    fused, reference = make_task(), make_task(fused=False)
    assert fused.fused and not reference.fused
    torch.testing.assert_close(fused(q, t).loss, reference(q, t).loss)
    # without an in-batch source the candidates need not hold the positives: never fused
    assert not RetrievalTask(MixedNegatives([UniformNegatives(50, 8)])).fused


def test_the_full_softmax_is_fused_and_equals_the_exact_cross_entropy():
    """Every item is a candidate: the fused path runs and equals a plain softmax over the whole table."""
    q, t = batch(5)
    full, reference = (RetrievalTask(MixedNegatives([FullCorpus(50)]), fused=f, logq=False) for f in (True, False))
    assert full.fused and not reference.fused
    exact = F.cross_entropy(q @ t.encode_items(torch.arange(50)).T / full.tau(), t.items)
    torch.testing.assert_close(full(q, t).loss, exact)
    torch.testing.assert_close(reference(q, t).loss, exact)


def test_a_part_adds_its_loss_without_touching_the_rest():
    class Penalty(nn.Module):
        def forward(self, queries, targets, task):
            return 0.5 * task.tau() / task.tau()

    q, t = batch(4)
    base = make_task()(q, t)
    out = make_task(parts={"penalty": Penalty()})(q, t)
    assert set(out.terms) == {"retrieval", "penalty"}
    torch.testing.assert_close(out.loss, base.loss + 0.5)


def test_a_learned_temperature_is_kept_in_range():
    task = make_task(temperature=0.05, learn_temperature=True)
    with torch.no_grad():
        task.log_tau.fill_(5.0)
    task.observe(batch()[1])
    assert abs(float(task.tau()) - 1.0) < 1e-6


def test_the_loss_objective_comes_from_the_config_and_trains_through_the_task():
    """``train.loss`` picks the objective; each gives a finite loss with a gradient on the queries, the fused
    and reference paths agree for it, and an unknown name is a ConfigError naming the choices."""
    import pytest

    from twotower.errors import ConfigError
    from twotower.train.config import TrainConfig

    for objective in ("bpr", "hinge", "nce"):
        q, t = batch(7)
        q = q.clone().requires_grad_(True)
        fused, reference = make_task(objective=objective), make_task(objective=objective, fused=False)
        loss = fused(q, t).loss
        loss.backward()
        assert torch.isfinite(loss) and q.grad is not None and q.grad.abs().sum() > 0
        torch.testing.assert_close(loss.detach(), reference(q.detach(), t).loss)
    assert TrainConfig(loss="bpr").loss == "bpr"
    with pytest.raises(ConfigError, match="softmax"):
        TrainConfig(loss="listnet")


def test_an_item_prior_is_added_to_every_logit_of_its_item_on_every_path():
    """With ``item_offset`` the full softmax equals the cross-entropy of ``q . v / tau + offset`` (the logit
    adjustment), fused and reference alike, with logQ too; a sampled task with logQ agrees between paths."""
    q, t = batch(7)
    offset = torch.linspace(-2.0, 1.0, 50)
    for logq in (False, True):
        full, ref = (
            RetrievalTask(MixedNegatives([FullCorpus(50)]), fused=f, logq=logq, item_offset=offset)
            for f in (True, False)
        )
        exact = F.cross_entropy(q @ t.encode_items(torch.arange(50)).T / full.tau() + offset, t.items)
        torch.testing.assert_close(full(q, t).loss, exact)
        torch.testing.assert_close(ref(q, t).loss, exact)
    fused, reference = make_task(item_offset=offset), make_task(fused=False, item_offset=offset)
    torch.testing.assert_close(fused(q, t).loss, reference(q, t).loss)
    assert not torch.allclose(fused(q, t).loss, make_task()(q, t).loss)


def test_the_item_prior_is_the_smoothed_log_odds_of_a_negative_event():
    import numpy as np

    from twotower.train.logits import item_prior

    neg, events = np.array([0, 5, 1, 0]), np.array([0, 10, 100, 4])  # an item without events: the overall rate
    got = item_prior(neg, events, strength=10.0)
    overall = 6 / 114
    for i in range(4):
        r = (neg[i] + 10 * overall) / (events[i] + 10)
        assert abs(float(got[i]) - np.log(r / (1 - r))) < 1e-5
    assert got[1] > got[0] > got[3] and got[1] > got[2]  # often disliked: highest
