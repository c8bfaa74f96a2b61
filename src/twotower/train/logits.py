"""Logit transforms of sampled softmax, each a pure function (TFRS-style pipeline).

Pipeline used by :func:`twotower.train.losses.sampled_softmax_loss`:
``scores -> / temperature -> - log q (logQ correction) -> accidental hits to -inf -> cross-entropy``.
Shapes: T queries (training targets), M candidate negatives; column 0 of the logits is the positive.
"""

from __future__ import annotations

import numpy as np
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


def item_prior(negative: np.ndarray, events: np.ndarray, strength: float = 10.0) -> torch.Tensor:
    """Smoothed log-odds that an item's training event is a negative one (``disliked``): float32 [N].

    ``negative`` / ``events``: int [N], each item's negative training events and all its training events. The
    rate is shrunk toward the catalogue's by ``strength`` pseudo-events, ``r_i = (d_i + a r) / (n_i + a)``,
    and ``log(r_i / (1 - r_i))`` returned. Added to item i's training logits with a weight
    (``train.dislike_prior``), it is a logit adjustment (Menon et al., "Long-tail learning via logit
    adjustment", ICLR 2021): the softmax is fitted with the offset in place, so the towers' own scores, which
    the index serves, come out lowered by it, the more the more often an item is disliked, for every user.
    """
    negative, events = np.asarray(negative, np.float64), np.asarray(events, np.float64)
    overall = negative.sum() / max(events.sum(), 1.0)
    rate = (negative + strength * overall) / (events + strength)
    rate = np.clip(rate, 1e-6, 1 - 1e-6)
    return torch.from_numpy(np.log(rate / (1 - rate)).astype(np.float32))
