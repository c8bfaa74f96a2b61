"""Per-epoch batch plans over training windows: length-bucketed, token-budgeted, reproducible by (seed, epoch).

Windows are sorted by length (random tie-break), cut into batches whose padded size ``B x max_len`` stays
under a token budget, and the batch order is shuffled. Bucketing removes most padding: ML-1M's windows are
mostly far shorter than 200. The plan is a pure function of (windows, seed, epoch), so resuming at
(epoch, batch index) reproduces the uninterrupted order exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.dataset import SequenceData
from ..features import Featurizer, UserInputs
from .pseudo import PseudoBatch, PseudoContext

HOLDOUT_SEED = 20190914  # a fixed draw: evaluation finds the held-out users again


def holdout_mask(num_users: int, fraction: float) -> np.ndarray:
    """bool [U]: users kept out of training (a fixed draw, so evaluation can find them again)."""
    return np.random.default_rng(HOLDOUT_SEED).random(num_users) < fraction


def training_windows(data: SequenceData, split: str, max_len: int, holdout_users: float) -> np.ndarray:
    """int64 [W, 3] (user, first event row, end row) windows of at most ``max_len`` training events, without
    the users :func:`holdout_mask` keeps out."""
    windows = data.train_windows(split, max_len)
    if holdout_users:
        windows = windows[~holdout_mask(data.num_users, holdout_users)[windows[:, 0]]]
    return windows


def plan_epoch(lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Window indices of each batch, in training order. lengths: int64 [W]."""
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches, lo = [], 0
    while lo < len(order):
        # Sorted ascending: the batch's padded length is its last window's length; grow while it fits.
        hi = lo + 1
        while hi < len(order) and (hi - lo + 1) * lengths[order[hi]] <= batch_tokens:
            hi += 1
        batches.append(order[lo:hi])
        lo = hi
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


class WindowBatches(Dataset):
    """Map-style dataset whose items are whole batches (use with ``DataLoader(batch_size=None)``).

    Item ``i`` -> (UserInputs [B, S], target event rows int64 [B, S] with -1 padding, PseudoBatch or None).
    With ``pseudo`` (hybrid towers) each target also gets its snapshot and context, drawn from
    ``(epoch, first + i * stride)`` (the epoch's global batch index: ``stride`` = world size under torchrun) so
    that a resumed epoch draws what the uninterrupted one did.
    """

    def __init__(
        self,
        feat: Featurizer,
        windows: np.ndarray,
        batches: list[np.ndarray],
        pseudo: PseudoContext | None = None,
        epoch: int = 0,
        first: int = 0,
        stride: int = 1,
    ):
        self.feat, self.windows, self.batches = feat, windows, batches
        self.pseudo, self.epoch, self.first, self.stride = pseudo, epoch, first, stride

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[UserInputs, torch.Tensor, PseudoBatch | None]:
        w = self.windows[self.batches[i]]
        user, start, end = w[:, 0], w[:, 1], w[:, 2]
        inputs = self.feat.users(user, start, end)
        S = inputs.history.item.shape[1]
        rows = start[:, None] + np.arange(S)[None, :]
        rows = np.where(rows < end[:, None], rows, -1)
        extra = (
            None
            if self.pseudo is None
            else self.pseudo.sample(user, start, rows, (self.epoch, self.first + i * self.stride))
        )
        return inputs, torch.from_numpy(rows), extra
