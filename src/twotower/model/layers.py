"""Building blocks of both towers: hash-embedding tables, the feature bag, a pre-norm transformer block.

Every entity is ``H`` hash embeddings (Phoenix retrieval model, seed 003): bucket 0 is padding and stays
zero, so masks come from the ids. :class:`Embeddings` holds the four tables both towers share; the item
tower, the user encoder and the online head all read items through :meth:`Embeddings.items`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..features.inputs import ItemInputs
from .config import ModelConfig


def score_vectors(x: torch.Tensor, similarity: str) -> torch.Tensor:
    """Tower outputs [..., D] -> the vectors whose inner product is the score: unit (``cosine``) or raw (``dot``).

    The one rule for both towers and the online head, so a user and an item vector never disagree on it."""
    return F.normalize(x, dim=-1) if similarity == "cosine" else x


def prefix_vectors(x: torch.Tensor, dim: int, similarity: str) -> torch.Tensor:
    """Score vectors [..., D] -> their first ``dim`` coordinates as score vectors [..., dim] (Matryoshka:
    unit again for ``cosine``; the normalisation of ``x`` is a scale, so this is the prefix of the raw output,
    normalised)."""
    if not 1 <= dim <= x.shape[-1]:
        raise ValueError(f"a prefix of {dim} dims of {x.shape[-1]}-dim vectors: use 1..{x.shape[-1]}")
    return score_vectors(x[..., :dim], similarity) if dim < x.shape[-1] else x


def padded_table(buckets: int, dim: int) -> nn.Embedding:
    """Embedding table with N(0, 0.02) rows and row 0 (padding) fixed at zero."""
    table = nn.Embedding(buckets, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.02)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class HashEmbedding(nn.Module):
    """One table for all H hash functions of an entity type: int64 [..., H] -> the H embeddings flattened
    [..., H*D]."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.table = padded_table(buckets, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
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


class Embeddings(nn.Module):
    """The id tables both towers share: items, authors, users (H hashes each) and the feature-token bag.

    Sharing them means an item seen only in histories still has a trained candidate embedding, and the
    towers meet only at the final dot product (no index or other state lives in the model).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.dim
        # Construction order = RNG draw order: kept as it was, so a seed still gives the same initial model.
        self.item = HashEmbedding(cfg.item_buckets, D)
        self.author = HashEmbedding(cfg.author_buckets, D)
        self.user = HashEmbedding(cfg.user_buckets, D)
        self.feat = BagEmbedding(cfg.feature_buckets, D)
        self.item_dim = 2 * cfg.num_hashes * D + D  # item hashes, author hashes, feature bag

    def items(self, x: ItemInputs) -> torch.Tensor:
        """Item features ``[item hashes ‖ author hashes ‖ feature bag]``: ItemInputs of [...] -> [..., 2HD + D]."""
        return torch.cat([self.item(x.item), self.author(x.author), self.feat(x.feat)], dim=-1)

    def users(self, user: torch.Tensor, user_feat: torch.Tensor) -> torch.Tensor:
        """User id hashes int64 [B, H] and feature tokens int64 [B, Fu] -> [B, HD + D]."""
        return torch.cat([self.user(user), self.feat(user_feat)], dim=-1)


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

    def forward(
        self, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, L, D]; key_mask bool [B, L] (valid keys; read only when not causal); ``attn_mask`` bool
        [B, L, L] (query i may see key j; overrides both, e.g. the ranker's candidate isolation) -> [B, L, D]."""
        q, k, v = self.heads_of(x)
        # Causal + right padding needs no key mask: valid positions only ever see earlier (valid) ones.
        if attn_mask is not None:
            mask, is_causal = attn_mask[:, None], False
        else:
            mask, is_causal = (None if causal else key_mask[:, None, None, :]), causal
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.p if self.training else 0.0
        )
        return self.after_attention(x, att)

    def heads_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] -> queries, keys, values [B, h, L, D / h] of its normed tokens."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        return tuple(t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))

    def after_attention(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x [B, L, D] and the attention's [B, h, L, D / h]: both residuals."""
        B, L, D = x.shape
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.ffn(self.ln2(x)))
