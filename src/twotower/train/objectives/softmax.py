"""Sampled softmax (InfoNCE), the default objective.

    loss_t = − s_tp + log( exp(s_tp) + Σ_{j ∈ N_t} exp(s_tj) )

with ``s`` the corrected logits (``u·v / τ − log q``) and ``N_t`` the row's negatives. With every item as a
candidate and no correction it is the full softmax cross-entropy. References: Jean et al., ACL 2015 (sampled
softmax); Yi et al., RecSys 2019 (in-batch softmax with logQ correction); van den Oord et al. 2018 (InfoNCE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..logits import NEG_INF


def softmax(logits: torch.Tensor, labels: torch.Tensor, negative: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """logits [T, C], labels int64 [T], negative bool [T, C] -> per-query loss [T] (``margin`` unused)."""
    keep = negative.clone()
    keep.scatter_(1, labels[:, None], True)
    return F.cross_entropy(logits.masked_fill(~keep, NEG_INF), labels, reduction="none")
