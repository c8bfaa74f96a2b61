"""Each loss piece against a slow, obvious reference on tiny tensors."""

import math

import torch
import torch.nn.functional as F

from twotower.train.logits import NEG_INF, logq_correct, remove_accidental_hits
from twotower.train.losses import candidate_softmax_loss, sampled_softmax_loss


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def slow_reference(q, pos, pos_ids, neg, neg_ids, tau, lq_pos=None, lq_neg=None, hits=True):
    losses = []
    for i in range(len(q)):
        terms = [float(q[i] @ pos[i]) / tau - (float(lq_pos[i]) if lq_pos is not None else 0.0)]
        pos_term = terms[0]
        for j in range(len(neg)):
            if hits and int(neg_ids[j]) == int(pos_ids[i]):
                continue
            terms.append(float(q[i] @ neg[j]) / tau - (float(lq_neg[j]) if lq_neg is not None else 0.0))
        m = max(terms)
        losses.append(-(pos_term - m - math.log(sum(math.exp(t - m) for t in terms))))
    return sum(losses) / len(losses)


def test_sampled_softmax_matches_slow_reference_with_logq_and_hits():
    q, pos, neg = unit(5, 4, seed=1), unit(5, 4, seed=2), unit(7, 4, seed=3)
    pos_ids = torch.tensor([0, 3, 3, 9, 11])
    neg_ids = torch.tensor([3, 1, 2, 9, 4, 5, 11])
    lq_pos, lq_neg = torch.rand(5, dtype=torch.float64).log(), torch.rand(7, dtype=torch.float64).log()
    got = sampled_softmax_loss(q, pos, pos_ids, neg, neg_ids, 0.1, lq_pos, lq_neg)
    assert abs(float(got) - slow_reference(q, pos, pos_ids, neg, neg_ids, 0.1, lq_pos, lq_neg)) < 1e-6
    no_hits = sampled_softmax_loss(q, pos, pos_ids, neg, neg_ids, 0.1, accidental_hits=False)
    assert abs(float(no_hits) - slow_reference(q, pos, pos_ids, neg, neg_ids, 0.1, hits=False)) < 1e-6
    assert float(got) != float(no_hits)


def test_full_corpus_is_exact_softmax():
    """Every item as candidate, no correction: identical to cross-entropy over the whole catalogue."""
    q, items = unit(6, 8, seed=4), unit(10, 8, seed=5)
    target = torch.tensor([0, 4, 4, 9, 2, 7])
    exact = F.cross_entropy(q @ items.T / 0.2, target)
    got = sampled_softmax_loss(q, items[target], target, items, torch.arange(10), 0.2)
    assert torch.allclose(got, exact)


def test_fused_candidate_loss_equals_reference():
    q, items = unit(9, 8, seed=6), unit(12, 8, seed=7)
    cand_ids = torch.tensor([0, 2, 3, 5, 8, 11])
    pos_ids = torch.tensor([2, 2, 3, 11, 0, 5, 8, 8, 3])
    labels = torch.searchsorted(cand_ids, pos_ids)
    log_q = torch.rand(len(cand_ids), dtype=torch.float64).log()
    ref = sampled_softmax_loss(q, items[pos_ids], pos_ids, items[cand_ids], cand_ids, 0.07, log_q[labels], log_q)
    fused = candidate_softmax_loss(q, items[cand_ids], labels, 0.07, log_q)
    assert torch.allclose(ref.double(), fused.double(), atol=1e-5)
    w = torch.rand(9, dtype=torch.float64)
    assert torch.allclose(
        sampled_softmax_loss(
            q, items[pos_ids], pos_ids, items[cand_ids], cand_ids, 0.07, log_q[labels], log_q, weight=w
        ).double(),
        candidate_softmax_loss(q, items[cand_ids], labels, 0.07, log_q, weight=w).double(),
        atol=1e-5,
    )


def test_transforms():
    logits = torch.zeros(2, 4)
    out = remove_accidental_hits(logits, torch.tensor([7, 8]), torch.tensor([8, 7, 8]))
    assert out[0].tolist() == [0, 0, NEG_INF, 0] and out[1].tolist() == [0, NEG_INF, 0, NEG_INF]
    lq = torch.log(torch.tensor([0.5, 1.0, 0.25, 1.0]))
    assert torch.allclose(logq_correct(logits, lq)[0], -lq)


def test_logq_rescues_popularity_bias():
    """With in-batch negatives drawn by popularity, the corrected loss is minimised by the true scores."""
    torch.manual_seed(0)
    n, d = 4, 4
    items = torch.eye(n, dtype=torch.float64)
    q = items.clone()
    pos_ids = torch.tensor([0, 0, 0, 1])
    neg_ids = torch.arange(n)
    p = torch.tensor([0.9, 0.5, 0.1, 0.1], dtype=torch.float64)
    a = sampled_softmax_loss(q, items[pos_ids], pos_ids, items, neg_ids, 1.0, p[pos_ids].log(), p.log())
    b = sampled_softmax_loss(q, items[pos_ids], pos_ids, items, neg_ids, 1.0)
    assert a.item() != b.item()
    assert d == n
