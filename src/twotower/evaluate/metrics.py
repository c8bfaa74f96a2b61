"""Full-ranking retrieval metrics as pure functions of the target's 0-based rank.

With exactly one relevant item per query: HR@K = Recall@K = ``rank < K``; NDCG@K = ``1 / log2(rank + 2)``
when ``rank < K`` (the ideal DCG is 1); MRR = ``1 / (rank + 1)`` over the whole ranking (no cut-off).
"""

from __future__ import annotations

import numpy as np
import torch

KS = (1, 10, 50, 100, 200)


def target_ranks(scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among all items. scores: [U, N]; target: int64 [U]; exclude: bool [U, N].

    Ties are broken by item index (lower index first), so equal scores never flatter a model. Excluded items
    are removed from the ranking; an excluded target counts as a miss (rank = N).
    """
    t = scores.gather(1, target[:, None])  # [U, 1]
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    idx = torch.arange(scores.shape[1], device=scores.device)[None, :]
    rank = (scores > t).sum(1) + ((scores == t) & (idx < target[:, None])).sum(1)
    if exclude is not None:
        rank = torch.where(exclude.gather(1, target[:, None])[:, 0], torch.full_like(rank, scores.shape[1]), rank)
    return rank


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)))


def summarize(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``{"hr@K", "ndcg@K" for each K, "mrr"}`` for an array of ranks."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["mrr"] = mrr(ranks)
    return out
