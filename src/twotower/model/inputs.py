"""Model inputs: hashed item features, user histories and the real-time request context.

All ids are already bucketed hashes (0 = padding); masks are derived from the ids, as in the Phoenix seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ItemInputs:
    """Hashed item features. ``item``/``author``: int64 [..., H]; ``feat``: int64 [..., F] (0 = padding)."""

    item: torch.Tensor
    author: torch.Tensor
    feat: torch.Tensor

    def to(self, device: torch.device | str) -> ItemInputs:
        return ItemInputs(*(t.to(device, non_blocking=True) for t in (self.item, self.author, self.feat)))

    def __getitem__(self, idx) -> ItemInputs:
        return ItemInputs(self.item[idx], self.author[idx], self.feat[idx])


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
