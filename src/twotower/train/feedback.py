"""Explicit negative feedback: events a log marks as negative (``disliked``, ``skipped``, ``hidden``).

Such an event stays in the user's history as a signed input (the encoder sees ``disliked`` like any action),
is not a training positive (``train.negative_actions``; ``train.negatives_as_positives = true`` keeps it one),
and becomes a hard negative of the same user's training targets within ``train.negative_window`` events of
it, at most ``train.negative_count`` per target (the nearest first). These columns are deterministic: their
inclusion probability is 1, so logQ leaves them as they are. Example: ML-1M's ``disliked`` (rating <= 2)
events are negatives of the targets around them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..errors import ConfigError, DataError
from ..layout import SPLIT_TRAIN


def negative_events(data: SequenceData, actions: list[str]) -> np.ndarray:
    """bool [E]: events carrying any of ``actions`` (names from the dataset's manifest)."""
    try:
        return data.action_mask(actions)
    except DataError as e:
        raise ConfigError(
            f"train.negative_actions: {e} (mark them at prepare time, e.g. `disliked: rating <= 2`)"
        ) from e


class FeedbackNegatives:
    """Per training target: the items of the same user's negative training events within ``window`` rows."""

    def __init__(self, data: SequenceData, split: str, actions: list[str], window: int, count: int):
        neg = negative_events(data, actions) & (data.split(split) == SPLIT_TRAIN)
        self.rows = np.flatnonzero(neg).astype(np.int64)  # sorted negative event rows
        self.user = data.user_of_event()
        self.item = data.event_item
        self.window, self.count = window, count

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target rows int64 [T] -> (item ids int64 [T, count], -1 = none; inclusion probability [T, count] = 1).

        The nearest negative events first (by distance in the user's sequence), never the target itself."""
        r = rows.cpu().numpy()
        T, K = len(r), self.count
        out = np.full((T, K), -1, dtype=np.int64)
        if len(self.rows) and T:
            lo = np.searchsorted(self.rows, r - self.window)
            hi = np.searchsorted(self.rows, r + self.window, side="right")
            span = int((hi - lo).max()) if T else 0
            if span:
                cand = lo[:, None] + np.arange(span)[None, :]  # [T, span] indices into self.rows
                ok = cand < hi[:, None]
                ev = self.rows[np.minimum(cand, len(self.rows) - 1)]
                ok &= (self.user[ev] == self.user[r][:, None]) & (ev != r[:, None])
                dist = np.where(ok, np.abs(ev - r[:, None]), np.iinfo(np.int64).max)
                order = np.argsort(dist, axis=1, kind="stable")[:, :K]
                take = np.take_along_axis(ok, order, 1)
                items = self.item[np.take_along_axis(ev, order, 1)].astype(np.int64)
                out[:, : order.shape[1]] = np.where(take, items, -1)
        items = torch.from_numpy(out)
        return items, torch.ones(items.shape)
