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

**Residual on the retriever** (``prior=True``): the retriever's own score of each candidate (the similarity the
index returned, ``[B, K]``) enters the logit as ``s * prior`` with a learned scale ``s`` (initialised to the
retriever's inverse temperature), so an untrained head ranks exactly as retrieval did and training learns
the correction. The prior is a per-candidate input like its features: isolation and order-independence hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import config as cfgmod
from ..errors import ArtifactError
from ..features.inputs import ItemInputs, UserInputs
from . import checkpoint as ckpt_read
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


def isolated_block(
    blk: Block, hist: torch.Tensor, cand: torch.Tensor, length: torch.Tensor, last: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One block of the masked forward (:func:`isolation_mask`) computed in two parts, for inference: the
    history [B, S, D] causally on its own (it never sees a candidate), then each candidate [B, K, D] attending
    to the valid history keys and to itself. Attention costs ``K x (S + 1)`` scores per head instead of
    ``(S + K)^2``. No dropout: eval mode only. Returns (history, candidates) after the block; ``last``: the
    history after it is not needed (only its keys and values are), None is returned in its place."""
    S, D = hist.shape[1], hist.shape[2]
    qh, kh, vh = blk.heads_of(hist)
    qc, kc, vc = blk.heads_of(cand)
    scale = (D // blk.heads) ** -0.5
    to_hist = (qc @ kh.transpose(-2, -1)) * scale  # [B, H, K, S]
    valid = torch.arange(S, device=length.device)[None, :] < length[:, None]  # [B, S]
    to_hist = to_hist.masked_fill(~valid[:, None, None, :], float("-inf"))
    to_self = (qc * kc).sum(-1, keepdim=True) * scale  # [B, H, K, 1]
    w = torch.softmax(torch.cat([to_hist, to_self], dim=-1), dim=-1)
    att_c = w[..., :S] @ vh + w[..., S:] * vc  # [B, H, K, hs]
    if last:
        return None, blk.after_attention(cand, att_c)
    att_h = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)  # [B, H, S, hs]
    return blk.after_attention(hist, att_h), blk.after_attention(cand, att_c)


class Ranker(nn.Module):
    """History [B, S] + candidates [B, K] -> one logit per candidate [B, K]."""

    def __init__(self, cfg: ModelConfig, prior_scale: float | None = None):
        """``prior_scale``: the initial weight of the retriever's score in the logit; None = no prior input."""
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
        self.prior_scale = None if prior_scale is None else nn.Parameter(torch.tensor(float(prior_scale)))
        self.tokens.init_tables()
        if self.prior_scale is not None:  # the correction starts at zero: an untrained ranker keeps retrieval's order
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, u: UserInputs, cands: ItemInputs, prior: torch.Tensor | None = None) -> torch.Tensor:
        """u: histories [B, S] (no user token); cands: ItemInputs of [B, K, ·]; prior: the retriever's scores
        float32 [B, K] (required when the ranker was built with a prior) -> logits [B, K]."""
        if (prior is None) != (self.prior_scale is None):
            raise ValueError("this ranker " + ("needs" if prior is None else "takes no") + " the retriever's scores")
        hist = self.tokens.event_tokens(u, self.embed)  # [B, S, D]
        S = hist.shape[1]
        if self.tokens.pos_emb is not None:
            hist = hist + self.tokens.pos_emb.weight[:S]
        c = self.cand_proj(self.embed.items(cands)) + self.cand_type  # [B, K, D]
        if self.training:  # the reference: one masked attention over S + K tokens (dropout as trained)
            K = c.shape[1]
            x = self.tokens.drop(torch.cat([hist, c], dim=1))
            mask = isolation_mask(u.length, S, K)
            for blk in self.blocks:
                x = blk(x, causal=False, key_mask=None, attn_mask=mask)
            c = x[:, S:]
        else:  # the same function without the K x K block the mask throws away (equal within float error)
            for i, blk in enumerate(self.blocks):
                hist, c = isolated_block(blk, hist, c, u.length, last=i == len(self.blocks) - 1)
        logits = self.head(self.ln_f(c)).squeeze(-1)
        return logits if prior is None else logits + self.prior_scale * prior


def load_ranker(
    path: str | Path, expect_retriever: str | None = None, allow_mismatch: bool = False
) -> tuple[Ranker, dict, str]:
    """(ranker in eval mode, its saved config, its version) from a ranker directory (``PATH/checkpoint``);
    refuses one trained against another retriever than ``expect_retriever`` unless ``allow_mismatch``."""
    weights, config, state, _ = ckpt_read.load(Path(path) / "checkpoint")
    if expect_retriever is not None and config.get("retriever_version") != expect_retriever and not allow_mismatch:
        raise ArtifactError(
            f"ranker {path} was trained against retriever {config.get('retriever_version')}, not {expect_retriever}: "
            "train a ranker for this retriever (`twotower train-ranker`), or allow the mismatch explicitly"
        )
    mc = cfgmod.from_dict(ModelConfig, config["model"], where=f"{path}/checkpoint/config.json [model]")
    ranker = Ranker(mc, config.get("prior_scale"))
    ranker.load_state_dict(weights)
    return ranker.eval(), config, str(state["model_version"])
