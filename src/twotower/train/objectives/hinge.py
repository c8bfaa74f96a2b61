"""Triplet margin (hinge) loss: every negative must score at least ``margin`` below the positive.

    loss_t = (1 / |N_t|) Σ_{j ∈ N_t} max(0, m − s_tp + s_tj)

``m`` is in logit units (the score after ``/ τ`` and logQ; with cosine scores and τ = 0.1, m = 1 is a cosine
gap of 0.1). References: Weston et al., "WSABIE", IJCAI 2011 (the ranking hinge for recommendation);
Schroff et al., "FaceNet", CVPR 2015 (triplet margin over embeddings); the seed's triplet / hinge family.
"""

from __future__ import annotations

import torch


def hinge(logits: torch.Tensor, labels: torch.Tensor, negative: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """logits [T, C], labels int64 [T], negative bool [T, C] -> per-query loss [T]."""
    pos = logits.gather(1, labels[:, None])  # [T, 1]
    pair = (margin - pos + logits).clamp_min(0.0) * negative  # [T, C]
    return pair.sum(1) / negative.sum(1).clamp_min(1)
