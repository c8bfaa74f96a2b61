"""Item sampling-probability estimators for logQ correction.

* :class:`StreamingFrequency` — Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
  Recommendations", RecSys 2019, Algorithm 2: for each item seen at step t,
  ``B[h] <- (1 - α) B[h] + α (t - A[h])``, ``A[h] <- t``; the probability that the item is in a batch is
  estimated as ``1 / B[h]``. One pass, O(1) memory per hash bucket, adapts to drifting popularity.
  One change to the paper: the step size is ``max(α, 1 / n_h)`` for the ``n_h``-th sighting (a running mean
  until ``1/α`` sightings, the EMA after), so the noisy first gap does not dominate rare items' estimates.
* :class:`ExactFrequency` — from known training counts: ``P(in batch) = 1 - (1 - f)^T`` for ``T`` targets
  drawn with item frequency ``f``. The reference for small corpora.
"""

from __future__ import annotations

import torch


class StreamingFrequency:
    """Streaming estimate of each item's per-batch inclusion probability (Yi et al. 2019)."""

    def __init__(self, size: int, alpha: float = 0.01):
        self.size, self.alpha = size, alpha
        self.step = 0
        self.last = torch.zeros(size, dtype=torch.float64)  # A: step of last occurrence
        self.gap = torch.zeros(size, dtype=torch.float64)  # B: EMA of steps between occurrences
        self.count = torch.zeros(size, dtype=torch.float64)  # sightings, for the warm-up step size

    def update(self, item_ids: torch.Tensor) -> None:
        """Observe one batch of (positive) item ids, int64 [T]."""
        self.step += 1
        h = torch.unique(item_ids.detach().cpu() % self.size)
        self.count[h] += 1
        rate = torch.clamp(1.0 / self.count[h], min=self.alpha)  # first sighting: rate 1, B = the gap itself
        self.gap[h] = (1 - rate) * self.gap[h] + rate * (self.step - self.last[h])
        self.last[h] = float(self.step)

    def prob(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Estimated inclusion probability per batch, float32 [M] in (0, 1]."""
        g = self.gap[item_ids.detach().cpu() % self.size]
        g = torch.where(g > 0, g, torch.full_like(g, max(self.step, 1)))  # never seen: at most once so far
        return (1.0 / g.clamp_min(1.0)).float().to(item_ids.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"last": self.last, "gap": self.gap, "count": self.count, "step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.last, self.gap, self.count = state["last"].clone(), state["gap"].clone(), state["count"].clone()
        self.step = int(state["step"])


class ExactFrequency:
    """Inclusion probability from exact item counts: ``1 - (1 - f_i)^T`` with ``f_i = c_i / Σc``."""

    def __init__(self, counts: torch.Tensor, targets_per_batch: int):
        f = counts.double() / counts.sum().clamp_min(1)
        self.p = (1 - (1 - f) ** targets_per_batch).float().clamp_min(1e-12)

    def update(self, item_ids: torch.Tensor) -> None:  # counts are known up front
        pass

    def prob(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.p.to(item_ids.device)[item_ids]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass
