"""Item sampling-probability estimators for logQ correction.

* :class:`StreamingFrequency` — Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
  Recommendations", RecSys 2019, Algorithm 2: for each item seen at step t,
  ``B[h] <- (1 - α) B[h] + α (t - A[h])``, ``A[h] <- t``; the probability that the item is in a batch is
  estimated as ``1 / B[h]``. One pass, O(1) memory per hash bucket, adapts to drifting popularity.
  One change to the paper: the step size is ``max(α, 1 / n_h)`` for the ``n_h``-th sighting (a running mean
  until ``1/α`` sightings, the EMA after), so the noisy first gap does not dominate rare items' estimates.
* :class:`ExactFrequency` — from known training counts: ``P(in batch) = 1 - (1 - f)^T`` for ``T`` targets
  drawn with item frequency ``f``. The reference for small corpora.

Both are ``nn.Module`` objects whose statistics are buffers: they live in the state dict of the task that owns
them, and so in every checkpoint, without special handling.
"""

from __future__ import annotations

import torch
from torch import nn


class StreamingFrequency(nn.Module):
    """Streaming estimate of each item's per-batch inclusion probability (Yi et al. 2019)."""

    def __init__(self, size: int, alpha: float = 0.01):
        super().__init__()
        self.size, self.alpha = size, alpha
        self.register_buffer("last", torch.zeros(size, dtype=torch.float64))  # A: step of last occurrence
        self.register_buffer("gap", torch.zeros(size, dtype=torch.float64))  # B: EMA of steps between occurrences
        self.register_buffer("count", torch.zeros(size, dtype=torch.float64))  # sightings, for the warm-up rate
        self.register_buffer("step", torch.tensor(0))  # int64: batches observed

    def update(self, item_ids: torch.Tensor) -> None:
        """Observe one batch of (positive) item ids, int64 [T]."""
        self.step += 1
        h = torch.unique(item_ids.detach().to(self.gap.device) % self.size)
        self.count[h] += 1
        rate = torch.clamp(1.0 / self.count[h], min=self.alpha)  # first sighting: rate 1, B = the gap itself
        self.gap[h] = (1 - rate) * self.gap[h] + rate * (self.step - self.last[h])
        self.last[h] = float(self.step)

    def prob(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Estimated inclusion probability per batch, float32 [M] in (0, 1]."""
        g = self.gap[item_ids.detach().to(self.gap.device) % self.size]
        g = torch.where(g > 0, g, torch.full_like(g, max(int(self.step), 1)))  # never seen: at most once so far
        return (1.0 / g.clamp_min(1.0)).float().to(item_ids.device)


class ExactFrequency(nn.Module):
    """Inclusion probability from exact item counts: ``1 - (1 - f_i)^T`` with ``f_i = c_i / Σc``.

    Derived from the dataset's training counts, so nothing of it is saved (a non-persistent buffer).
    """

    def __init__(self, counts: torch.Tensor, targets_per_batch: int):
        super().__init__()
        f = counts.double() / counts.sum().clamp_min(1)
        self.register_buffer("p", (1 - (1 - f) ** targets_per_batch).float().clamp_min(1e-12), persistent=False)

    def update(self, item_ids: torch.Tensor) -> None:  # counts are known up front
        pass

    def prob(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Inclusion probability of ``item_ids`` int64 [M], float32 [M]."""
        return self.p.to(item_ids.device)[item_ids]
