"""The funnel's second stage: a ranking model that scores K retrieved candidates with the user's history,
each candidate in isolation (seed 003, Phoenix's ranking model).

Input: the user's history tokens (the user tower's featurisation: item features, signed actions, surface,
time gap, positions), followed by K candidate tokens (``Linear(item features)`` plus a learned "candidate"
vector, no position). One transformer over the ``S + K`` tokens with the mask

    history token i  ->  history tokens j <= i          (causal, as the user tower is trained)
    candidate c      ->  every valid history token, and itself

so a candidate never sees another candidate: its score does not depend on what else was retrieved, nor on the
order the candidates come in (no position on them). An MLP head gives one logit per candidate. Shapes:
history ``[B, S]``, candidates ``[B, K]``, logits ``[B, K]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..features.inputs import ItemInputs, UserInputs
from .config import ModelConfig
from .layers import Block, Embeddings
from .user_encoder import UserEncoder


def isolation_mask(length: torch.Tensor, S: int, K: int) -> torch.Tensor:
    """bool [B, S + K, S + K]: query i may attend key j (see the module docstring). ``length``: int64 [B]
    valid history tokens (right padding)."""
    L = S + K
    i = torch.arange(L, device=length.device)
    hist_q, hist_k = i[:, None] < S, i[None, :] < S
    causal = hist_q & hist_k & (i[None, :] <= i[:, None])  # [L, L]
    valid_k = i[None, None, :] < length[:, None, None]  # [B, 1, L]: real history keys
    cand = (~hist_q) & ((hist_k & valid_k) | (i[None, :] == i[:, None]))  # [B, L, L]
    return causal[None] | cand


class Ranker(nn.Module):
    """History [B, S] + candidates [B, K] -> one logit per candidate [B, K]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.dim
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.tokens = UserEncoder(cfg, self.embed.item_dim)  # history tokens and positions (its blocks unused)
        self.cand_proj = nn.Linear(self.embed.item_dim, D)
        self.cand_type = nn.Parameter(torch.zeros(D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, 1))
        self.tokens.init_tables()

    def forward(self, u: UserInputs, cands: ItemInputs) -> torch.Tensor:
        """u: histories [B, S] (no user token); cands: ItemInputs of [B, K, ·] -> logits [B, K]."""
        hist = self.tokens.event_tokens(u, self.embed)  # [B, S, D]
        S = hist.shape[1]
        if self.tokens.pos_emb is not None:
            hist = hist + self.tokens.pos_emb.weight[:S]
        c = self.cand_proj(self.embed.items(cands)) + self.cand_type  # [B, K, D]
        K = c.shape[1]
        x = self.tokens.drop(torch.cat([hist, c], dim=1))
        mask = isolation_mask(u.length, S, K)
        for blk in self.blocks:
            x = blk(x, causal=False, key_mask=None, attn_mask=mask)
        return self.head(self.ln_f(x[:, S:])).squeeze(-1)
