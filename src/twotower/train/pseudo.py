"""Pseudo-context augmentation: train the hybrid tower on exactly what the server will feed it.

At serving time the online head sees a state cached at some earlier snapshot plus the events since then
(seed 001, "train/serve parity"). So for every training target at window position ``p`` we draw a snapshot
``lag`` events earlier (``lag ~ U{0..min(max_lag, p)}``): the offline encoder's output after the first
``p - lag`` events is the state, and the last ``context_len`` events of ``[snapshot, target)`` are the
context. A lag beyond ``context_len`` leaves a gap the head never sees, as a stale state with a busy day
does. With probability ``no_state_prob`` (and always when the snapshot precedes every event) the state is
missing, which trains the cold-start / fallback path. The draw is a pure function of (seed, epoch, batch),
so resumed training sees the same contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..features import Featurizer, Snapshots


@dataclass
class PseudoBatch(Snapshots):
    """Per training target (row-major over the window batch's valid positions): its snapshot and context.

    The :class:`~twotower.features.Snapshots` the model reads (batch: int64 [N] window row; n_events: int64
    [N] events before the snapshot, 0 = no state; ctx: the request features, ``events`` None: the events are
    window positions ``ctx_pos`` int64 [N, C], the first ``ctx_len`` [N] valid, whose tokens the encoder pass
    already computed), plus snapshot_row, target_row, subject_row: int64 [N] event rows (what a server would
    be asked with; tests re-featurize them to check train/serve parity) and ``strict``.
    """

    snapshot_row: np.ndarray
    target_row: np.ndarray
    subject_row: np.ndarray
    strict: np.ndarray  # bool [N]: request features of the strict protocol (see Featurizer.request_features)


@dataclass
class PseudoContext:
    """Draws each training target's snapshot and context (see the module docstring)."""

    feat: Featurizer
    max_lag: int = 64
    no_state_prob: float = 0.05
    subject_prob: float = 0.2
    seed: int = 0
    strict_prob: float = 0.0  # requests with the strict protocol's features (time = last event's, no surface)
    head_fraction: float = 1.0  # share of the targets the online head trains on (a random sample)
    fresh_prob: float = 0.0  # extra share of lag-0 snapshots: a fresh state and no context (a strict request)

    def sample(self, user: np.ndarray, start: np.ndarray, rows: np.ndarray, key: tuple[int, ...]) -> PseudoBatch:
        """user, start: int64 [B] window owner and first event row; rows: int64 [B, S] target rows (-1 = pad)."""
        rng = np.random.default_rng([self.seed, *key])
        b, p = np.nonzero(rows >= 0)
        target = rows[b, p]
        lag = rng.integers(0, np.minimum(self.max_lag, p) + 1)
        u_state, u_subject, u_strict = rng.random(len(p)), rng.random(len(p)), rng.random(len(p))
        if self.fresh_prob > 0:  # drawn after the others: they do not move
            lag = np.where(rng.random(len(p)) < self.fresh_prob, 0, lag)
        n_events = p - lag
        has_state = (n_events >= 1) & (u_state >= self.no_state_prob)
        snapshot = start[b] + n_events
        users = user[b]
        has_prev = target > self.feat.data.user_offsets[users]
        subject = np.where(has_prev & (u_subject < self.subject_prob), target - 1, -1)
        strict = u_strict < self.strict_prob
        position = None
        if self.head_fraction < 1.0:  # the head trains on a sample of the targets (the encoder on all)
            keep = np.flatnonzero(rng.random(len(p)) < self.head_fraction)
            b, p, target, n_events, has_state = b[keep], p[keep], target[keep], n_events[keep], has_state[keep]
            snapshot, users, subject, strict = snapshot[keep], users[keep], subject[keep], strict[keep]
            position = torch.from_numpy(p)
        ctx = self.feat.request_features(users, target, subject, strict_rows=strict)
        C = self.feat.cfg.context_len
        first = np.maximum(n_events, p - C)  # window position of the first context event
        ctx_len = p - first
        ctx_pos = np.minimum(first[:, None] + np.arange(C)[None, :], np.maximum(p - 1, 0)[:, None])
        return PseudoBatch(
            torch.from_numpy(b),
            torch.from_numpy(np.where(has_state, n_events, 0)),
            ctx,
            torch.from_numpy(ctx_pos),
            torch.from_numpy(ctx_len),
            position,
            snapshot,
            target,
            subject,
            strict,
        )
