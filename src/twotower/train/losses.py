"""The retrieval loss over a positive and a set of candidate negatives: sampled softmax (InfoNCE) by default,
or another objective of the family in :mod:`twotower.train.objectives` (BPR, hinge, NCE) on the same logits.

For query ``u_i`` with positive ``v_i`` and candidates ``{v_j}``:

    loss_i = -log( exp(s_ii') / (exp(s_ii') + Σ_j exp(s_ij')) ),   s_ij' = u_i·v_j / τ - log q_j

with accidental hits (``j`` = the positive item) removed. References: Yi et al. RecSys 2019 (logQ, in-batch
softmax), Yang et al. WWW 2020 (mixed negatives), TFRS ``tasks/retrieval.py`` (transform pipeline).
With every item as a candidate and ``q = 1`` this is exactly the full softmax. ``objective`` swaps the last
step (the cross-entropy) for another function of the same logits, labels and negatives mask.

Example::

    loss = sampled_softmax_loss(q, pos, pos_ids, neg, neg_ids, log_q_neg=..., log_q_pos=..., temperature=0.05)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .logits import logq_correct, scale_by_temperature
from .objectives import OBJECTIVES


def _mean(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-query losses [T], weighted by ``weight`` [T] when given."""
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def _full(t: torch.Tensor) -> torch.Tensor:
    """Softmax in at least float32 (bf16 autocast outputs are upcast; float64 stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class Logits:
    """One batch's corrected logits and what each column is to each row, before the objective.

    logits: [T, C]; labels: int64 [T], the positive's column; negative: bool [T, C], the row's negatives.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    negative: torch.Tensor

    def loss(self, objective: str, margin: float, weight: torch.Tensor | None) -> torch.Tensor:
        """The (weighted) mean of ``objective`` over the rows."""
        return _mean(OBJECTIVES[objective](self.logits, self.labels, self.negative, margin), weight)


def reference_logits(
    query: torch.Tensor,
    pos: torch.Tensor,
    pos_ids: torch.Tensor,
    neg: torch.Tensor,
    neg_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q_pos: torch.Tensor | None = None,
    log_q_neg: torch.Tensor | None = None,
    accidental_hits: bool = True,
) -> Logits:
    """The transform pipeline: column 0 the positive, then the shared negatives; accidental hits are not
    negatives. query [T, D]; pos [T, D]; pos_ids int64 [T]; neg [M, D]; neg_ids int64 [M]; log_q_* [T] / [M]."""
    if (log_q_pos is None) != (log_q_neg is None):
        raise ValueError("logQ correction needs both log_q_pos and log_q_neg (or neither)")
    pos_logit = scale_by_temperature(_full((query * pos).sum(-1, keepdim=True)), temperature)  # [T, 1]
    neg_logits = scale_by_temperature(_full(query @ neg.T), temperature)  # [T, M]
    if log_q_pos is not None:
        pos_logit = logq_correct(pos_logit, log_q_pos[:, None])
        neg_logits = logq_correct(neg_logits, log_q_neg[None, :])
    logits = torch.cat([pos_logit, neg_logits], dim=1)  # column 0 is the positive
    negative = torch.ones_like(logits, dtype=torch.bool)  # [T, 1 + M]
    negative[:, 0] = False
    if accidental_hits:  # a negative column that is the row's own positive item
        negative[:, 1:] &= pos_ids[:, None] != neg_ids[None, :]
    labels = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return Logits(logits, labels, negative)


def candidate_logits(
    query: torch.Tensor,
    cand: torch.Tensor,
    labels: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
) -> Logits:
    """One column per candidate item (they hold every positive): ``-log q + (u / τ) · Cᵀ``; every column but
    the label's is a negative. query [T, D]; cand [M, D]; labels int64 [T]; log_q [M]."""
    logits = _candidate_scores(query, cand, temperature, log_q)
    negative = torch.ones_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], False)
    return Logits(logits, labels, negative)


def _candidate_scores(
    query: torch.Tensor, cand: torch.Tensor, temperature: torch.Tensor | float, log_q: torch.Tensor | None
) -> torch.Tensor:
    """``-log q + (u / τ) · Cᵀ`` [T, M], temperature and logQ folded into one ``addmm``."""
    q, cand = _full(query) / temperature, _full(cand)
    if log_q is None:
        return q @ cand.T
    return torch.addmm(-log_q.to(q.dtype)[None, :], q, cand.T)


def with_hard_negatives(
    base: Logits,
    query: torch.Tensor,
    hard: torch.Tensor,
    usable: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
) -> Logits:
    """``base`` with H per-row columns appended: each row's own (mined) negatives.

    query [T, D]; hard [T, H, D] their vectors; usable bool [T, H] (False: no mined item, or one the row
    already has as a column); log_q [T, H] their inclusion probabilities' logs (None: no correction).
    """
    logits = scale_by_temperature(_full(torch.einsum("td,thd->th", query, hard)), temperature)  # [T, H]
    if log_q is not None:
        logits = logq_correct(logits, log_q)
    return Logits(
        torch.cat([base.logits, logits.to(base.logits.dtype)], dim=1),
        base.labels,
        torch.cat([base.negative, usable], dim=1),
    )


def sampled_softmax_loss(
    query: torch.Tensor,
    pos: torch.Tensor,
    pos_ids: torch.Tensor,
    neg: torch.Tensor,
    neg_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q_pos: torch.Tensor | None = None,
    log_q_neg: torch.Tensor | None = None,
    accidental_hits: bool = True,
    weight: torch.Tensor | None = None,
    objective: str = "softmax",
    margin: float = 1.0,
) -> torch.Tensor:
    """Mean (optionally weighted) loss of ``objective`` (default: the sampled softmax).

    query: [T, D]; pos: [T, D]; pos_ids: int64 [T]; neg: [M, D]; neg_ids: int64 [M];
    log_q_pos: [T] and log_q_neg: [M] (both or neither); weight: [T]; ``margin``: the hinge's, in logit units.
    """
    built = reference_logits(query, pos, pos_ids, neg, neg_ids, temperature, log_q_pos, log_q_neg, accidental_hits)
    return built.loss(objective, margin, weight)


def candidate_softmax_loss(
    query: torch.Tensor,
    cand: torch.Tensor,
    labels: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    objective: str = "softmax",
    margin: float = 1.0,
) -> torch.Tensor:
    """Fast path of :func:`sampled_softmax_loss` when the candidate set holds every positive once.

    query: [T, D]; cand: [M, D] unique candidate items that include every positive; labels: int64 [T], the
    positive's column; log_q: [M]. Because each item is one column, the positive is never also a negative
    (accidental hits cannot occur) and temperature and logQ fold into one ``addmm``:
    ``logits = -log q + (u / τ) · Cᵀ``. Equal to the reference when its negatives are this candidate set
    (every column but the label's is a negative of the row).
    """
    if objective == "softmax":  # no column is masked: the plain cross-entropy, without building the mask
        logits = _candidate_scores(query, cand, temperature, log_q)
        return _mean(F.cross_entropy(logits, labels, reduction="none"), weight)
    return candidate_logits(query, cand, labels, temperature, log_q).loss(objective, margin, weight)
