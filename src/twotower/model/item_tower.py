"""The candidate (item) tower: item features -> unit item vectors.

Seed 003 §3: the item's hash and feature embeddings (shared with the user tower, see
:class:`~twotower.model.layers.Embeddings`) go through ``Linear(2D) -> SiLU -> Linear(D)`` and are
L2-normalised, so the retrieval score is a cosine (``item_tower = "linear"``: one projection instead of the
MLP; ``similarity = "dot"``: no normalisation). It has no dropout: the vectors it makes at training time
are the ones exported for the index.

Item text (``text_dim`` > 0): the frozen sentence encoder's vector [N, E] goes through a learned
``Linear(E, D)`` and is concatenated to the id and feature embeddings before the MLP, so an item whose id row
was never trained (a cold item) is still placed by what it is. Inputs without text (history tokens of a
``tied_input`` model) read a zero text vector.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import score_vectors


class ItemTower(nn.Module):
    """Item features [N, 2HD + D] (from ``Embeddings.items``) and text [N, E] -> unit vectors [N, D]."""

    def __init__(self, cfg: ModelConfig, item_dim: int):
        super().__init__()
        D = cfg.dim
        self.text_proj = nn.Linear(cfg.text_dim, D) if cfg.text_dim else None
        item_dim += D if cfg.text_dim else 0
        if cfg.item_tower == "mlp":
            self.mlp = nn.Sequential(nn.Linear(item_dim, 2 * D), nn.SiLU(), nn.Linear(2 * D, D))
        else:  # linear: the item's vector is a projection of its embeddings, as close to an id table as hashing gets
            self.mlp = nn.Sequential(nn.Linear(item_dim, D))
        self.similarity = cfg.similarity

    def forward(self, item_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """item_features [..., 2HD + D], text float [..., E] or None -> score vectors [..., D]."""
        if self.text_proj is not None:
            if text is None:
                t = item_features.new_zeros(*item_features.shape[:-1], self.text_proj.out_features)
            else:
                t = self.text_proj(text.to(item_features.dtype))
            item_features = torch.cat([item_features, t], dim=-1)
        return score_vectors(self.mlp(item_features), self.similarity)
