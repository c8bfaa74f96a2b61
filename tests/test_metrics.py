import numpy as np
import pytest
import torch

from twotower.evaluate.metrics import hit_rate, mrr, ndcg, summarize, target_ranks


def test_ranks_hand_computed():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    assert target_ranks(scores, torch.tensor([2, 0])).tolist() == [1, 0]
    # tie at 0.5 between items 2 and 3: the lower index wins, so item 3 ranks after item 2
    assert target_ranks(scores, torch.tensor([3, 3])).tolist() == [2, 3]


def test_exclusion_removes_seen_and_misses_excluded_target():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.4]])
    excl = torch.tensor([[False, True, False, False]])
    assert target_ranks(scores, torch.tensor([2]), excl).tolist() == [0]
    assert target_ranks(scores, torch.tensor([1]), excl).tolist() == [4]


def test_metric_values():
    ranks = np.array([0, 1, 9, 10, 100])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 101) / 5)
    s = summarize(ranks, (1, 10))
    assert s["hr@1"] == pytest.approx(0.2) and s["ndcg@1"] == pytest.approx(0.2)
