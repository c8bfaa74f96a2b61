import numpy as np
import torch

from twotower.train.frequency import ExactFrequency, StreamingFrequency
from twotower.train.negatives import FullCorpus, InBatchNegatives, MixedNegatives, UniformNegatives


def test_streaming_estimator_tracks_zipf_within_5_percent():
    rng = np.random.default_rng(0)
    n, per_batch, steps = 1000, 64, 12000
    p = 1.0 / np.arange(1, n + 1) ** 1.1
    p /= p.sum()
    true_incl = 1 - (1 - p) ** per_batch  # probability that an item is in a batch of 64 draws
    est = StreamingFrequency(n, alpha=0.002)
    for _ in range(steps):
        est.update(torch.from_numpy(rng.choice(n, per_batch, p=p)))
    got = est.prob(torch.arange(n)).numpy()
    head = true_incl > 0.05  # items seen often enough (>= 600 times) for the EMA to settle
    assert head.sum() >= 20
    rel = np.abs(got - true_incl) / true_incl
    assert rel[:20].max() < 0.05, rel[:20]  # the 20 most popular items, each within 5 %
    assert rel[head].mean() < 0.05, rel[head].mean()  # and on average over every item seen >= 600 times
    assert (got > 0).all() and (got <= 1).all()


def test_exact_frequency_is_inclusion_probability():
    counts = torch.tensor([6.0, 3.0, 1.0, 0.0])
    f = ExactFrequency(counts, targets_per_batch=2)
    expected = 1 - (1 - counts / 10) ** 2
    assert torch.allclose(f.prob(torch.arange(3)), expected[:3].float())


def test_mixed_inclusion_adds_sources():
    freq = ExactFrequency(torch.tensor([1.0, 1.0, 2.0]), 1)
    mix = MixedNegatives([InBatchNegatives(freq), UniformNegatives(3, 1)])
    p = mix.inclusion_prob(torch.tensor([0, 2]))
    assert torch.allclose(p, torch.tensor([0.25 + 1 / 3, 0.5 + 1 / 3]))
    g = torch.Generator().manual_seed(0)
    cand = mix.sample(torch.tensor([2, 2, 0]), g)
    assert {0, 2} <= set(cand.tolist()) and len(cand) == len(set(cand.tolist()))
    assert FullCorpus(5).sample(torch.tensor([1]), g).tolist() == [0, 1, 2, 3, 4]


def test_streaming_state_roundtrip():
    a = StreamingFrequency(10)
    for i in range(5):
        a.update(torch.tensor([i, 1]))
    b = StreamingFrequency(10)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.prob(torch.arange(10)), b.prob(torch.arange(10)))
