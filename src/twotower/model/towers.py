"""The two towers: hash embeddings, a transformer user tower and an MLP candidate tower.

Follows the Phoenix retrieval model (seed 003): every entity is H hash embeddings, flattened and projected;
the user tower reads ``[user token, history tokens]`` through a pre-norm transformer, pools and
L2-normalises; the candidate tower is ``Linear(2D) -> SiLU -> Linear(D) -> L2``. The towers share the
embedding tables and meet only at the final dot product. No index lives in here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .inputs import Context, ItemInputs, UserInputs
from .online import OnlineHead


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
        # Hybrid split: the online head and the subject-item projection exist only when asked for.
        self.head = OnlineHead(cfg) if cfg.online_head else None
        self.subject_proj = nn.Linear(item_in, D) if cfg.online_head else None
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
    def _event_tokens(self, ev: UserInputs) -> torch.Tensor:
        """History tokens [B, S, D]: Linear(item features ‖ signed actions ‖ surface) + time-gap embedding.

        Shared by the offline encoder (the history) and the online head (the events since the snapshot).
        """
        valid = ev.history.item[..., 0] > 0  # [B, S]; masks come from the ids, 0 = padding
        # Signed actions (seed 003): (2a - 1) @ W, zeroed where there is no event.
        signed = (2.0 * ev.actions - 1.0) * valid[..., None]
        act = self.action_proj(signed) if self.cfg.num_actions else signed.new_zeros(*valid.shape, self.cfg.dim)
        h = self.hist_proj(torch.cat([self._item_features(ev.history), act, self.surface_emb(ev.surface)], dim=-1))
        if self.gap_emb is not None:
            h = h + self.gap_emb(ev.gap)
        return h

    def _tokens(self, u: UserInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """([user token, history tokens] with positions, after dropout: [B, 1 + S, D] (or [B, S, D] without
        the user token); the bare history tokens [B, S, D], which training reuses as the head's context)."""
        ev = self._event_tokens(u)
        h = ev
        if self.cfg.user_token:
            ut = self.user_proj(torch.cat([self.user_emb(u.user), self.feat_emb(u.user_feat)], dim=-1))
            h = torch.cat([ut[:, None, :], h], dim=1)
        if self.pos_emb is not None:
            h = h + self.pos_emb.weight[: h.shape[1]]
        return self.drop(h), ev

    def _offset(self) -> int:
        return 1 if self.cfg.user_token else 0

    def encode_raw(self, u: UserInputs) -> torch.Tensor:
        """Encoder outputs before normalisation, one per prefix: [B, L, D], L = S (+1 with the user token).

        Output ``j`` summarises tokens ``0..j``; with the user token, output ``j`` has seen history ``< j``.
        Only meaningful for causal models (bidirectional outputs see the whole sequence).
        """
        return self.encode_raw_and_tokens(u)[0]

    def encode_raw_and_tokens(self, u: UserInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`encode_raw`, the history tokens [B, S, D] it was computed from)."""
        x, ev = self._tokens(u)
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
        return x, ev

    def encode_sequence(self, u: UserInputs) -> torch.Tensor:
        """Unit user vectors for every prefix: [B, L, D] (see :meth:`encode_raw`)."""
        return F.normalize(self.encode_raw(u), dim=-1)

    def states_at(self, raw: torch.Tensor, batch: torch.Tensor, n_events: torch.Tensor) -> torch.Tensor:
        """Cached-state tensors [N, T, D] from encoder outputs ``raw`` [B, L, D].

        Query ``n`` takes the outputs of row ``batch[n]`` after its first ``n_events[n]`` events (the last T
        of them, oldest first). Rows that summarise no event are zero, the "missing" marker.
        """
        T, off = self.cfg.state_tokens, self._offset()
        last = n_events + off - 1  # [N] output index after n_events events
        pos = last[:, None] - torch.arange(T - 1, -1, -1, device=raw.device)[None, :]  # [N, T]
        ok = pos >= off  # an output index >= off has seen at least one event
        out = raw[batch[:, None], pos.clamp_min(0)]
        return out * ok[..., None].to(out.dtype)

    def encode_state(self, u: UserInputs) -> torch.Tensor:
        """Offline encoder: the whole history -> the state cached in the feature store, [B, T, D]."""
        raw = self.encode_raw(u)
        return self.states_at(raw, torch.arange(raw.shape[0], device=raw.device), u.length)

    def add_subject(self, request: torch.Tensor, subject: ItemInputs) -> torch.Tensor:
        """``request`` [B, D] + the projected subject item of each row that has one (all-zero ids = none)."""
        has = (subject.item[:, 0] > 0)[:, None].to(request.dtype)
        return request + has * self.subject_proj(self._item_features(subject))

    def encode_online(
        self, state: torch.Tensor, ctx: Context, event_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Online head: cached state [B, T, D] (zero rows = missing) + request context -> unit vectors [B, D].

        ``event_tokens`` = (tokens [B, C, D], lengths int64 [B]) of the context events when the caller already
        has them (training gathers them from the window pass); otherwise they are embedded from ``ctx.events``.
        """
        if self.head is None:
            raise ValueError("this model has no online head; train it with model.online_head = true")
        request = self.head.request(ctx.surface, ctx.hour, ctx.weekday, ctx.since_last)
        if bool((ctx.subject.item > 0).any()):  # most requests have none: skip the projection
            request = self.add_subject(request, ctx.subject)
        if event_tokens is None:
            event_tokens = (self._event_tokens(ctx.events), ctx.events.length)
        return self.head(state, *event_tokens, request)

    def encode_user(self, u: UserInputs, ctx: Context | None = None) -> torch.Tensor:
        """User tower -> unit vectors [B, D].

        Unsplit: the output after the whole history. Hybrid (``online_head``): the encoder's state after the
        history, then the online head over ``ctx`` (required: the request's time, surface and recent events).
        """
        if self.head is None:
            seq = self.encode_sequence(u)
            last = (u.length + self._offset() - 1).clamp_min(0)
            return seq[torch.arange(seq.shape[0], device=seq.device), last]
        if ctx is None:
            raise ValueError("this model has an online head: pass the request context (Featurizer.request)")
        return self.encode_online(self.encode_state(u), ctx)
