"""Model inputs: hashed item features, user histories, the real-time request context, training snapshots.

All ids are already bucketed hashes (0 = padding); masks are derived from the ids, as in the Phoenix seed.
The :class:`~twotower.features.Featurizer` builds them from dataset arrays, the service from JSON requests;
the model consumes them. Plain dataclasses of tensors: nothing here knows the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ItemInputs:
    """Hashed item features. ``item``/``author``: int64 [..., H]; ``feat``: int64 [..., F] (0 = padding);
    ``text``: float [..., E] sentence-encoder vectors, or None (the candidate tower then reads zeros)."""

    item: torch.Tensor
    author: torch.Tensor
    feat: torch.Tensor
    text: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> ItemInputs:
        text = None if self.text is None else self.text.to(device, non_blocking=True)
        return ItemInputs(*(t.to(device, non_blocking=True) for t in (self.item, self.author, self.feat)), text)

    def __getitem__(self, idx: int | slice | torch.Tensor) -> ItemInputs:
        text = None if self.text is None else self.text[idx]
        return ItemInputs(self.item[idx], self.author[idx], self.feat[idx], text)


@dataclass
class UserInputs:
    """A batch of users and their histories (right-padded; valid tokens first).

    user: int64 [B, H]; user_feat: int64 [B, Fu]; history: ItemInputs of [B, S, ·];
    actions: float32 [B, S, A] multi-hot; surface: int64 [B, S]; gap: int64 [B, S] time-gap bucket;
    length: int64 [B] number of valid history tokens.
    """

    user: torch.Tensor
    user_feat: torch.Tensor
    history: ItemInputs
    actions: torch.Tensor
    surface: torch.Tensor
    gap: torch.Tensor
    length: torch.Tensor

    def to(self, device: torch.device | str) -> UserInputs:
        return UserInputs(
            self.user.to(device),
            self.user_feat.to(device),
            self.history.to(device),
            self.actions.to(device),
            self.surface.to(device),
            self.gap.to(device),
            self.length.to(device),
        )

    @classmethod
    def events_only(
        cls,
        item: np.ndarray,
        author: np.ndarray,
        feat: np.ndarray,
        actions: np.ndarray,
        surface: np.ndarray,
        gap: np.ndarray,
        length: np.ndarray,
    ) -> UserInputs:
        """Event tokens from arrays (``item``/``author`` int64 [B, S, H], ``feat`` [B, S, F], ``actions`` float32
        [B, S, A], ``surface``/``gap`` int64 [B, S], ``length`` int64 [B]), the user fields zeros [B, H]: for
        readers of event tokens only (the online head's context events, the ranker's history)."""
        zeros = torch.zeros(item.shape[0], item.shape[2], dtype=torch.int64)
        return cls(
            user=zeros,
            user_feat=zeros,
            history=ItemInputs(torch.from_numpy(item), torch.from_numpy(author), torch.from_numpy(feat)),
            actions=torch.from_numpy(actions),
            surface=torch.from_numpy(surface),
            gap=torch.from_numpy(gap),
            length=torch.from_numpy(length),
        )

    def __getitem__(self, idx: int | slice | torch.Tensor) -> UserInputs:
        """The users ``idx`` selects (every field indexed on its batch dimension)."""
        return UserInputs(self.user[idx], self.user_feat[idx], self.history[idx], self.actions[idx],
                          self.surface[idx], self.gap[idx], self.length[idx])  # fmt: skip


@dataclass
class Context:
    """Real-time context of a request, the online head's input besides the cached state.

    ``events``: the user's events since the state's snapshot, oldest first, right-padded to C, as a
    :class:`UserInputs` whose ``history``/``actions``/``surface``/``gap``/``length`` are used ([B, C, ·];
    its user fields are ignored); None when the caller hands the head their tokens directly (training).
    ``surface``: int64 [B] the request's surface (0 = unknown);
    ``hour``: int64 [B] 0..23 and ``weekday``: int64 [B] 0..6 (Monday = 0) of the request time, UTC;
    ``since_last``: int64 [B] time-gap bucket of (request time - the user's last known event);
    ``subject``: :class:`ItemInputs` [B, ·] the item the request is about (all-zero ids = none).
    """

    events: UserInputs | None
    surface: torch.Tensor
    hour: torch.Tensor
    weekday: torch.Tensor
    since_last: torch.Tensor
    subject: ItemInputs

    def to(self, device: torch.device | str) -> Context:
        return Context(
            None if self.events is None else self.events.to(device),
            *(t.to(device) for t in (self.surface, self.hour, self.weekday, self.since_last)),
            self.subject.to(device),
        )


@dataclass
class Snapshots:
    """Where each training target's cached state was taken and which events reach the online head.

    Training a hybrid tower on a window batch ``[B, S]``: target ``n`` (of ``N`` valid positions, row-major) is
    served from the offline encoder's state after the first ``n_events[n]`` events of window row
    ``batch[n]`` (``n_events = 0``: no state) plus the events at window positions ``ctx_pos[n, :ctx_len[n]]``.

    batch: int64 [N]; n_events: int64 [N]; ctx: :class:`Context` of [N, ·] whose ``events`` is None (their
    tokens come from the window pass); ctx_pos: int64 [N, C]; ctx_len: int64 [N]; position: int64 [N] the
    window position of each target, or None when the targets are every valid position (row-major).
    """

    batch: torch.Tensor
    n_events: torch.Tensor
    ctx: Context
    ctx_pos: torch.Tensor
    ctx_len: torch.Tensor
    position: torch.Tensor | None

    def to(self, device: torch.device | str) -> Snapshots:
        return Snapshots(
            self.batch.to(device),
            self.n_events.to(device),
            self.ctx.to(device),
            self.ctx_pos.to(device),
            self.ctx_len.to(device),
            None if self.position is None else self.position.to(device),
        )
