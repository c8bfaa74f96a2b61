"""The two towers: hash embeddings, a transformer user tower and an MLP candidate tower.

Follows the Phoenix retrieval model (seed 003): every entity is H hash embeddings, flattened and projected;
the user tower reads ``[user token, history tokens]`` through a pre-norm transformer, pools and
L2-normalises; the candidate tower is ``Linear(2D) -> SiLU -> Linear(D) -> L2``. The towers share the
embedding tables and meet only at the final dot product. No index lives in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


@dataclass
class ItemInputs:
    """Hashed item features. ``item``/``author``: int64 [..., H]; ``feat``: int64 [..., F] (0 = padding)."""

    item: torch.Tensor
    author: torch.Tensor
    feat: torch.Tensor

    def to(self, device: torch.device | str) -> ItemInputs:
        return ItemInputs(*(t.to(device, non_blocking=True) for t in (self.item, self.author, self.feat)))

    def __getitem__(self, idx) -> ItemInputs:
        return ItemInputs(self.item[idx], self.author[idx], self.feat[idx])


@dataclass
class UserInputs:
    """A batch of users and their histories (right-padded; valid tokens first).

    user: int64 [B, H]; user_feat: int64 [B, Fu]; history: ItemInputs of [B, S, ·];
    actions: float32 [B, S, A] multi-hot; surface: int64 [B, S]; gap: int64 [B, S] time-gap bucket;
    length: int64 [B] number of valid history tokens.
    """

    user: torch.Tensor
    user_feat: torch.Tensor
    history: ItemInputs
    actions: torch.Tensor
    surface: torch.Tensor
    gap: torch.Tensor
    length: torch.Tensor

    def to(self, device: torch.device | str) -> UserInputs:
        return UserInputs(
            self.user.to(device),
            self.user_feat.to(device),
            self.history.to(device),
            self.actions.to(device),
            self.surface.to(device),
            self.gap.to(device),
            self.length.to(device),
        )


def padded_table(buckets: int, dim: int) -> nn.Embedding:
    """Embedding table with N(0, 0.02) rows and row 0 (padding) fixed at zero."""
    table = nn.Embedding(buckets, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.02)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class HashEmbedding(nn.Module):
    """One table for all H hash functions of an entity type; returns the H embeddings flattened: [..., H*D]."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.table = padded_table(buckets, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # int64 [..., H] -> [..., H*D]
        return self.table(ids).flatten(-2)


class BagEmbedding(nn.Module):
    """Mean of the non-padding feature-token embeddings: int64 [..., F] -> [..., D] (zeros if none)."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.table = padded_table(buckets, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] == 0:
            return self.table.weight.new_zeros(*ids.shape[:-1], self.table.embedding_dim)
        count = (ids > 0).sum(-1, keepdim=True).clamp_min(1)
        return self.table(ids).sum(-2) / count


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)); x + FFN(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.num_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.p = cfg.attn_dropout

    def forward(self, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, L, hs)
        # Causal + right padding needs no key mask: valid positions only ever see earlier (valid) ones.
        att = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if causal else key_mask[:, None, None, :],
            is_causal=causal,
            dropout_p=self.p if self.training else 0.0,
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.ffn(self.ln2(x)))


class TwoTower(nn.Module):
    """User tower + candidate tower. ``encode_user`` -> [B, D], ``encode_items`` -> [N, D], unit norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, H = cfg.dim, cfg.num_hashes
        self.item_emb = HashEmbedding(cfg.item_buckets, D)
        self.author_emb = HashEmbedding(cfg.author_buckets, D)
        self.user_emb = HashEmbedding(cfg.user_buckets, D)
        self.feat_emb = BagEmbedding(cfg.feature_buckets, D)
        item_in = 2 * H * D + D  # item hashes, author hashes, feature bag
        # Candidate tower (seed 003 §3): expand to 2D, SiLU, compress to D.
        self.cand_mlp = nn.Sequential(nn.Linear(item_in, 2 * D), nn.SiLU(), nn.Linear(2 * D, D))
        # History token: item features + signed actions + surface, projected to D.
        self.action_proj = nn.Linear(max(cfg.num_actions, 1), D, bias=False)
        self.surface_emb = nn.Embedding(cfg.num_surfaces + 1, D, padding_idx=0)
        self.hist_proj = nn.Linear(item_in + 2 * D, D)
        self.user_proj = nn.Linear(H * D + D, D)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, D) if "learned" in cfg.positions else None
        self.gap_emb = nn.Embedding(cfg.time_buckets, D) if "time" in cfg.positions else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(D)
        # Small init for every table (nanoGPT-style): default N(0, 1) positions would drown the item signal.
        for emb in (self.pos_emb, self.gap_emb, self.surface_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.surface_emb.weight[0].zero_()

    # --- candidate tower -------------------------------------------------------------------------------
    def _item_features(self, x: ItemInputs) -> torch.Tensor:  # [..., 2HD + D]
        return torch.cat([self.item_emb(x.item), self.author_emb(x.author), self.feat_emb(x.feat)], dim=-1)

    def encode_items(self, items: ItemInputs) -> torch.Tensor:
        """Candidate tower: ItemInputs of [N, ·] -> unit vectors [N, D]."""
        return F.normalize(self.cand_mlp(self._item_features(items)), dim=-1)

    # --- user tower ------------------------------------------------------------------------------------
    def _tokens(self, u: UserInputs) -> torch.Tensor:
        """[user token, history tokens] -> [B, 1 + S, D] (or [B, S, D] without the user token)."""
        valid = u.history.item[..., 0] > 0  # [B, S]; masks come from the ids, 0 = padding
        # Signed actions (seed 003): (2a - 1) @ W, zeroed where there is no event.
        signed = (2.0 * u.actions - 1.0) * valid[..., None]
        act = self.action_proj(signed) if self.cfg.num_actions else signed.new_zeros(*valid.shape, self.cfg.dim)
        h = torch.cat([self._item_features(u.history), act, self.surface_emb(u.surface)], dim=-1)
        h = self.hist_proj(h)  # [B, S, D]
        if self.gap_emb is not None:
            h = h + self.gap_emb(u.gap)
        if self.cfg.user_token:
            ut = self.user_proj(torch.cat([self.user_emb(u.user), self.feat_emb(u.user_feat)], dim=-1))
            h = torch.cat([ut[:, None, :], h], dim=1)
        if self.pos_emb is not None:
            h = h + self.pos_emb.weight[: h.shape[1]]
        return self.drop(h)

    def _offset(self) -> int:
        return 1 if self.cfg.user_token else 0

    def encode_sequence(self, u: UserInputs) -> torch.Tensor:
        """Transformer outputs, one user vector per prefix: [B, L, D] (unit norm), L = S (+1 with user token).

        Output ``j`` summarises tokens ``0..j``; with the user token, output ``j`` has seen history ``< j``.
        Only meaningful for causal models (bidirectional outputs see the whole sequence).
        """
        x = self._tokens(u)
        B, L, _ = x.shape
        n_valid = u.length + self._offset()
        key_mask = torch.arange(L, device=x.device)[None, :] < n_valid[:, None]  # [B, L]
        for blk in self.blocks:
            x = blk(x, self.cfg.causal, key_mask)
        x = self.ln_f(x)
        if self.cfg.pooling == "mean":  # masked mean over the visible prefix 0..j
            m = key_mask[..., None].to(x.dtype)
            denom = torch.arange(1, L + 1, device=x.device, dtype=x.dtype)[None, :, None]
            x = (
                (x * m).cumsum(1) / denom
                if self.cfg.causal
                else ((x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)).expand_as(x)
            )
        return F.normalize(x, dim=-1)

    def encode_user(self, u: UserInputs) -> torch.Tensor:
        """User tower: the whole history -> unit vectors [B, D] (the output at the last valid position)."""
        seq = self.encode_sequence(u)
        last = (u.length + self._offset() - 1).clamp_min(0)
        return seq[torch.arange(seq.shape[0], device=seq.device), last]
