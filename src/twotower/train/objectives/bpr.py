"""Bayesian Personalised Ranking: a pairwise logistic loss, averaged over the row's negatives.

    loss_t = (1 / |N_t|) Σ_{j ∈ N_t} − log σ(s_tp − s_tj) = mean_j softplus(s_tj − s_tp)

Reference: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009 (one sampled
negative per pair; here every negative of the candidate set forms a pair, the estimate with least variance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr(logits: torch.Tensor, labels: torch.Tensor, negative: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """logits [T, C], labels int64 [T], negative bool [T, C] -> per-query loss [T] (``margin`` unused)."""
    pos = logits.gather(1, labels[:, None])  # [T, 1]
    pair = F.softplus(logits - pos) * negative  # [T, C]
    return pair.sum(1) / negative.sum(1).clamp_min(1)
