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


# --- the loss family (twotower.train.objectives) against per-pair loops -----------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def slow_pairwise(objective, q, pos, pos_ids, neg, neg_ids, tau, lq_pos, lq_neg, margin=1.0):
    """Each query's loss from its corrected positive logit and its negatives' (accidental hits skipped)."""
    losses = []
    for i in range(len(q)):
        sp = float(q[i] @ pos[i]) / tau - float(lq_pos[i])
        sn = [
            float(q[i] @ neg[j]) / tau - float(lq_neg[j]) for j in range(len(neg)) if int(neg_ids[j]) != int(pos_ids[i])
        ]
        if objective == "bpr":
            losses.append(sum(-math.log(_sigmoid(sp - s)) for s in sn) / len(sn))
        elif objective == "hinge":
            losses.append(sum(max(0.0, margin - sp + s) for s in sn) / len(sn))
        else:  # nce
            losses.append(-math.log(_sigmoid(sp)) - sum(math.log(1.0 - _sigmoid(s)) for s in sn))
    return sum(losses) / len(losses)


def test_each_objective_matches_its_slow_reference_and_the_fused_path():
    q, items = unit(9, 8, seed=11), unit(12, 8, seed=12)
    cand_ids = torch.tensor([0, 2, 3, 5, 8, 11])
    pos_ids = torch.tensor([2, 2, 3, 11, 0, 5, 8, 8, 3])
    labels = torch.searchsorted(cand_ids, pos_ids)
    log_q = torch.rand(len(cand_ids), dtype=torch.float64).log()
    args = (q, items[pos_ids], pos_ids, items[cand_ids], cand_ids, 0.2, log_q[labels], log_q)
    values = {}
    for objective in ("bpr", "hinge", "nce"):
        got = sampled_softmax_loss(*args, objective=objective, margin=1.5)
        want = slow_pairwise(objective, *args, margin=1.5)
        assert abs(float(got) - want) < 1e-9, objective
        fused = candidate_softmax_loss(q, items[cand_ids], labels, 0.2, log_q, objective=objective, margin=1.5)
        assert abs(float(fused) - want) < 1e-9, objective
        values[objective] = want
    assert len(set(values.values())) == 3  # three different functions
    # the softmax objective is the old cross-entropy, on both paths
    soft = sampled_softmax_loss(*args, objective="softmax")
    assert abs(float(soft) - slow_reference(*args)) < 1e-9


def test_objectives_order_a_better_positive_as_lower_loss():
    """Raising the positive's score lowers every objective; the hinge is zero once the margin is met."""
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    ids = torch.tensor([1, 2])
    for objective in ("softmax", "bpr", "hinge", "nce"):
        near = sampled_softmax_loss(q, neg[1:], torch.tensor([0]), neg, ids, 1.0, objective=objective, margin=0.5)
        far = sampled_softmax_loss(q, q, torch.tensor([0]), neg, ids, 1.0, objective=objective, margin=0.5)
        assert float(far) < float(near), objective
    met = sampled_softmax_loss(q, q, torch.tensor([0]), neg, ids, 1.0, objective="hinge", margin=0.3)
    assert float(met) == 0.0  # 1 - 0.6 = 0.4 > 0.3 for both negatives
