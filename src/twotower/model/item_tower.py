"""The candidate (item) tower: item features -> unit item vectors.

Seed 003 §3: the item's hash and feature embeddings (shared with the user tower, see
:class:`~twotower.model.layers.Embeddings`) go through ``Linear(2D) -> SiLU -> Linear(D)`` and are
L2-normalised, so the retrieval score is a cosine (``item_tower = "linear"``: one projection instead of the
MLP; ``similarity = "dot"``: no normalisation). It has no dropout: the vectors it makes at training time
are the ones exported for the index.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import score_vectors


class ItemTower(nn.Module):
    """Item features [N, 2HD + D] (from ``Embeddings.items``) -> unit vectors [N, D]."""

    def __init__(self, cfg: ModelConfig, item_dim: int):
        super().__init__()
        D = cfg.dim
        if cfg.item_tower == "mlp":
            self.mlp = nn.Sequential(nn.Linear(item_dim, 2 * D), nn.SiLU(), nn.Linear(2 * D, D))
        else:  # linear: the item's vector is a projection of its embeddings, as close to an id table as hashing gets
            self.mlp = nn.Sequential(nn.Linear(item_dim, D))
        self.similarity = cfg.similarity

    def forward(self, item_features: torch.Tensor) -> torch.Tensor:
        return score_vectors(self.mlp(item_features), self.similarity)
