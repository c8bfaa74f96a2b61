"""Logit transforms of sampled softmax, each a pure function (TFRS-style pipeline).

Pipeline used by :func:`twotower.train.losses.sampled_softmax_loss`:
``scores -> / temperature -> - log q (logQ correction) -> accidental hits to -inf -> cross-entropy``.
Shapes: T queries (training targets), M candidate negatives; column 0 of the logits is the positive.
"""

from __future__ import annotations

import torch

NEG_INF = -1e9  # large negative rather than -inf: keeps softmax finite when a row is all masked


def scale_by_temperature(logits: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """``logits / τ``. Cosine scores live in [-1, 1]; τ ≈ 0.05 sharpens them into a useful softmax."""
    return logits / temperature


def logq_correct(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Sampling-bias correction (Yi et al., RecSys 2019): ``s_ij - log q_j``.

    logits: [T, 1 + M]; log_q: [1 + M] or [T, 1 + M], the log of each column's (expected) inclusion count
    under the proposal that produced the candidates. Popular items are sampled as negatives more often than
    the softmax would weigh them; subtracting log q makes the sampled softmax an unbiased estimate.
    """
    return logits - log_q


def remove_accidental_hits(logits: torch.Tensor, pos_ids: torch.Tensor, neg_ids: torch.Tensor) -> torch.Tensor:
    """Mask negative columns that are the row's own positive item (an "accidental hit").

    logits: [T, 1 + M]; pos_ids: int64 [T]; neg_ids: int64 [M]. Column 0 (the positive) is never masked.
    """
    hit = pos_ids[:, None] == neg_ids[None, :]  # [T, M]
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(hit, NEG_INF)], dim=1)
