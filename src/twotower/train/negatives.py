"""Negative-sampling strategies, handed to the retrieval task as objects (not boolean flags).

Each strategy proposes candidate item ids for a batch and states each candidate's expected inclusion
probability under its own proposal. :class:`MixedNegatives` (Yang et al., "Mixed Negative Sampling for
Learning Two-tower Neural Networks in Recommendations", WWW 2020) takes the union of its sources; an item's
inclusion probability under the mixture is the sum over sources (capped at 1), and its logQ correction is
the log of that. The positive of every query is a column of its own, so duplicates are harmless.

Strategies are ``nn.Module`` objects so that whatever state they keep (a frequency estimate) is in the task's
``state_dict`` and so in every checkpoint. A new strategy (e.g. mined hard negatives) subclasses
:class:`NegativeSource` and is added to the mixture in :func:`twotower.train.task.build_task`.
"""

from __future__ import annotations

import torch
from torch import nn

from .frequency import ExactFrequency, StreamingFrequency


class NegativeSource(nn.Module):
    """One proposal of candidate items. Subclasses implement :meth:`sample` and :meth:`inclusion_prob`."""

    def sample(self, pos_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Candidate ids, int64 [M] (unique), for a batch whose positives are ``pos_ids`` [T]."""
        raise NotImplementedError

    def inclusion_prob(self, ids: torch.Tensor) -> torch.Tensor:
        """Probability that each id in ``ids`` [M] is among this strategy's candidates, float [M]."""
        raise NotImplementedError

    def observe(self, pos_ids: torch.Tensor) -> None:
        """Update any popularity statistics with a batch's positives int64 [T] (after the optimizer step)."""


class InBatchNegatives(NegativeSource):
    """The batch's other positives: a popularity-proportional proposal, corrected by a frequency estimate."""

    def __init__(self, frequency: StreamingFrequency | ExactFrequency | None):
        super().__init__()
        self.frequency = frequency  # None: no correction (inclusion probability taken as 1)

    def sample(self, pos_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.unique(pos_ids)

    def inclusion_prob(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(ids), device=ids.device) if self.frequency is None else self.frequency.prob(ids)

    def observe(self, pos_ids: torch.Tensor) -> None:
        if self.frequency is not None:
            self.frequency.update(pos_ids)


class UniformNegatives(NegativeSource):
    """``num`` items drawn uniformly from the corpus ``[0, num_items)`` (with replacement, deduplicated), or
    from ``pool`` (int64 [P], the training catalogue: the cold-start protocol's held-out items are not in it)."""

    def __init__(self, num_items: int, num: int, pool: torch.Tensor | None = None):
        super().__init__()
        self.num_items, self.num = num_items, num
        self.register_buffer("pool", pool, persistent=False)
        self.size = num_items if pool is None else len(pool)

    def sample(self, pos_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        draw = torch.randint(0, self.size, (self.num,), generator=generator)
        ids = draw if self.pool is None else self.pool.cpu()[draw]
        return torch.unique(ids).to(pos_ids.device)

    def inclusion_prob(self, ids: torch.Tensor) -> torch.Tensor:
        p = 1.0 - (1.0 - 1.0 / self.size) ** self.num
        return torch.full((len(ids),), p, device=ids.device)


class FullCorpus(NegativeSource):
    """Every item is a candidate: the exact full softmax (inclusion probability 1, no correction); ``pool``:
    only these items (int64 [P], the training catalogue)."""

    def __init__(self, num_items: int, pool: torch.Tensor | None = None):
        super().__init__()
        self.num_items = num_items
        self.register_buffer("pool", pool, persistent=False)

    def sample(self, pos_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pool is not None:
            return self.pool.to(pos_ids.device)
        return torch.arange(self.num_items, device=pos_ids.device)

    def inclusion_prob(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(ids), device=ids.device)


class MixedNegatives(NegativeSource):
    """Union of several sources; inclusion probability = min(1, Σ_sources p_s)."""

    def __init__(self, sources: list[NegativeSource]):
        super().__init__()
        if not sources:
            raise ValueError("MixedNegatives needs at least one source")
        self.sources = nn.ModuleList(sources)

    def sample(self, pos_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.unique(torch.cat([s.sample(pos_ids, generator) for s in self.sources]))

    def inclusion_prob(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([s.inclusion_prob(ids) for s in self.sources]).sum(0).clamp(max=1.0)

    def observe(self, pos_ids: torch.Tensor) -> None:
        for s in self.sources:
            s.observe(pos_ids)

    @property
    def covers_positives(self) -> bool:
        """Whether every batch's candidates hold all its positives (an in-batch or full-corpus source is among
        them): the task can then take the fused one-column-per-item loss."""
        return any(isinstance(s, (InBatchNegatives, FullCorpus)) for s in self.sources)
