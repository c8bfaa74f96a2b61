"""The online head of the hybrid user tower (seed 001): cached offline state + real-time context -> user vector.

The offline encoder (the transformer over the history) runs in batch and its state is cached in the feature
store; this head runs at request time. It is deliberately small: one attention read over at most
``T + C`` tokens and an MLP, so a request costs a few percent of the encoder (measured in
``benchmarks/freshness.py``). It starts as a pass-through of the state (identity projection, residual MLP),
so an empty context reproduces the unsplit tower's vector up to what training changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import score_vectors


class OnlineHead(nn.Module):
    """Context layer + MLP.

    ``s = mean_t(W_s state_t)`` over the T state tokens (a missing token is the learned no-state vector),
    ``r`` = request embedding (surface + hour + weekday + time since the last event + subject item),
    ``a = Attn(query = LN(s + r), keys/values = LN([W_s state ; events + recency]))``,
    ``u = L2(s + MLP(LN([s ; a ; r])))``.

    The request embedding ``r`` is :meth:`request` plus, for requests about an item, :meth:`add_subject`.
    """

    def __init__(self, cfg: ModelConfig, item_dim: int):
        super().__init__()
        D = cfg.dim
        self.heads = cfg.head_heads
        self.similarity = cfg.similarity
        self.state_proj = nn.Linear(D, D)
        with torch.no_grad():  # start as a pass-through of the cached state
            self.state_proj.weight.copy_(torch.eye(D))
            self.state_proj.bias.zero_()
        self.no_state = nn.Parameter(0.02 * torch.randn(cfg.state_tokens, D))
        self.recency = nn.Embedding(cfg.context_len, D)
        self.surface = nn.Embedding(cfg.num_surfaces + 1, D)
        self.hour = nn.Embedding(24, D)
        self.weekday = nn.Embedding(7, D)
        self.since_last = nn.Embedding(cfg.time_buckets, D)
        for emb in (self.recency, self.surface, self.hour, self.weekday, self.since_last):
            nn.init.normal_(emb.weight, std=0.02)
        self.ln_q, self.ln_kv = nn.LayerNorm(D), nn.LayerNorm(D)
        self.q, self.kv, self.attn_out = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)
        self.ln_mlp = nn.LayerNorm(3 * D)
        self.mlp = nn.Sequential(nn.Linear(3 * D, 2 * D), nn.SiLU(), nn.Linear(2 * D, D))
        self.subject_proj = nn.Linear(item_dim, D)  # the request's subject item, from its item features

    def request(
        self, surface: torch.Tensor, hour: torch.Tensor, weekday: torch.Tensor, since_last: torch.Tensor
    ) -> torch.Tensor:
        """Request embedding [B, D] from int64 [B] features (the subject item is added by :meth:`add_subject`)."""
        return self.surface(surface) + self.hour(hour) + self.weekday(weekday) + self.since_last(since_last)

    def add_subject(self, request: torch.Tensor, subject: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """``request`` [B, D] + the projected subject item features ``subject`` [B, 2HD + D] where ``has``
        [B, 1] is 1 (rows without a subject add nothing)."""
        return request + has * self.subject_proj(subject)

    def forward(
        self, state: torch.Tensor, events: torch.Tensor, event_len: torch.Tensor, request: torch.Tensor
    ) -> torch.Tensor:
        """state [B, T, D] (all-zero rows = missing); events [B, C, D] event tokens, valid first;
        event_len int64 [B]; request [B, D] -> unit user vectors [B, D]."""
        B, C, D = events.shape
        present = state.abs().sum(-1) > 0  # [B, T]
        st = torch.where(present[..., None], self.state_proj(state), self.no_state.to(state.dtype)[None])
        s = st.mean(1)  # [B, D]
        c = torch.arange(C, device=events.device)
        valid = c[None, :] < event_len[:, None]  # [B, C]
        recency = (event_len[:, None] - 1 - c[None, :]).clamp(0, self.recency.num_embeddings - 1)
        kv_in = self.ln_kv(torch.cat([st, events + self.recency(recency)], dim=1))  # [B, T + C, D]
        mask = torch.cat([torch.ones_like(present), valid], dim=1)  # the state tokens are always readable
        h, hs = self.heads, D // self.heads
        q = self.q(self.ln_q(s + request)).view(B, h, 1, hs)
        k, v = self.kv(kv_in).view(B, -1, 2, h, hs).permute(2, 0, 3, 1, 4)  # 2 x (B, h, T + C, hs)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        a = self.attn_out(a.reshape(B, D))
        u = s + self.mlp(self.ln_mlp(torch.cat([s, a, request], dim=-1)))
        return score_vectors(u, self.similarity)
