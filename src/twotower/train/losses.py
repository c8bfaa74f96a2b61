"""Sampled softmax (InfoNCE) over a positive and a set of candidate negatives.

For query ``u_i`` with positive ``v_i`` and candidates ``{v_j}``:

    loss_i = -log( exp(s_ii') / (exp(s_ii') + Σ_j exp(s_ij')) ),   s_ij' = u_i·v_j / τ - log q_j

with accidental hits (``j`` = the positive item) removed. References: Yi et al. RecSys 2019 (logQ, in-batch
softmax), Yang et al. WWW 2020 (mixed negatives), TFRS ``tasks/retrieval.py`` (transform pipeline).
With every item as a candidate and ``q = 1`` this is exactly the full softmax.

Example::

    loss = sampled_softmax_loss(q, pos, pos_ids, neg, neg_ids, log_q_neg=..., log_q_pos=..., temperature=0.05)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .logits import logq_correct, remove_accidental_hits, scale_by_temperature


def _mean(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-query losses [T], weighted by ``weight`` [T] when given."""
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def _full(t: torch.Tensor) -> torch.Tensor:
    """Softmax in at least float32 (bf16 autocast outputs are upcast; float64 stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


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
) -> torch.Tensor:
    """Mean (optionally weighted) sampled-softmax loss.

    query: [T, D]; pos: [T, D]; pos_ids: int64 [T]; neg: [M, D]; neg_ids: int64 [M];
    log_q_pos: [T] and log_q_neg: [M] (both or neither); weight: [T].
    """
    if (log_q_pos is None) != (log_q_neg is None):
        raise ValueError("logQ correction needs both log_q_pos and log_q_neg (or neither)")
    pos_logit = scale_by_temperature(_full((query * pos).sum(-1, keepdim=True)), temperature)  # [T, 1]
    neg_logits = scale_by_temperature(_full(query @ neg.T), temperature)  # [T, M]
    if log_q_pos is not None:
        pos_logit = logq_correct(pos_logit, log_q_pos[:, None])
        neg_logits = logq_correct(neg_logits, log_q_neg[None, :])
    logits = torch.cat([pos_logit, neg_logits], dim=1)  # column 0 is the positive
    if accidental_hits:
        logits = remove_accidental_hits(logits, pos_ids, neg_ids)
    labels = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return _mean(F.cross_entropy(logits, labels, reduction="none"), weight)


def candidate_softmax_loss(
    query: torch.Tensor,
    cand: torch.Tensor,
    labels: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fast path of :func:`sampled_softmax_loss` when the candidate set holds every positive once.

    query: [T, D]; cand: [M, D] unique candidate items that include every positive; labels: int64 [T], the
    positive's column; log_q: [M]. Because each item is one column, the positive is never also a negative
    (accidental hits cannot occur) and temperature and logQ fold into one ``addmm``:
    ``logits = -log q + (u / τ) · Cᵀ``. Equal to the reference when its negatives are this candidate set.
    """
    q, cand = _full(query) / temperature, _full(cand)
    if log_q is None:
        logits = q @ cand.T
    else:
        logits = torch.addmm(-log_q.to(q.dtype)[None, :], q, cand.T)  # [T, M]
    return _mean(F.cross_entropy(logits, labels, reduction="none"), weight)
