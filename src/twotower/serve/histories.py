"""The users' histories in the served dataset: what ``GET /demo`` shows and what the ranker reads.

The bundle keeps the served dataset memory-mapped (``Bundle.data``); this maps a user id to their rows. The id
table is built on first use (one dict of every user id, e.g. ~0.5 s and ~60 MB at 1M users) and belongs to the
bundle it was built for: a reload that brings a new dataset gets a new one.
"""

from __future__ import annotations

import threading

import numpy as np

from .bundle import Bundle


class UserHistories:
    """User id -> event rows ``[lo, hi)`` of the served dataset."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._rows: dict[str, int] | None = None
        self._lock = threading.Lock()

    def row(self, user_id: str) -> int:
        """The user's dense index, -1 when the served dataset does not know them."""
        if self._rows is None:
            with self._lock:
                if self._rows is None:
                    data = self.bundle.data
                    ids = data.user_ids() if data is not None else np.zeros(0, object)
                    self._rows = {str(u): i for i, u in enumerate(ids.tolist())}
        return self._rows.get(user_id, -1)

    def span(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) event rows of each user, int64 [B] each; ``lo == hi`` for users the dataset does not know."""
        data = self.bundle.data
        rows = np.fromiter((self.row(u) for u in user_ids), np.int64, len(user_ids))
        lo = np.zeros(len(user_ids), np.int64)
        hi = np.zeros(len(user_ids), np.int64)
        if data is not None:
            known = rows >= 0
            lo[known] = data.user_offsets[rows[known]]
            hi[known] = data.user_offsets[rows[known] + 1]
        return lo, hi

    def last_events(self, user_id: str, n: int) -> tuple[int, list[dict]]:
        """(events the dataset holds for the user, their last ``n`` as JSON dicts, oldest first)."""
        data = self.bundle.data
        [lo], [hi] = self.span([user_id])
        if data is None or hi == lo:
            return 0, []
        start = max(int(lo), int(hi) - n)
        names = list(data.manifest.get("actions", []))
        surfaces = ["", *data.manifest.get("surfaces", [])]
        items = self.bundle.items.ids
        out = []
        for e in range(start, int(hi)):
            bits, surface = int(data.event_actions[e]), int(data.event_surface[e])
            out.append(
                {
                    "item_id": str(items[int(data.event_item[e])]),
                    "timestamp": int(data.event_ts[e]),
                    "actions": [a for i, a in enumerate(names) if bits >> i & 1],
                    "surface": surfaces[surface] if 0 < surface < len(surfaces) else None,
                }
            )
        return int(hi - lo), out


_lock = threading.Lock()
_current: tuple[int, UserHistories] | None = None


def histories(bundle: Bundle) -> UserHistories:
    """The :class:`UserHistories` of ``bundle`` (one at a time: a reload's new bundle replaces the old one's)."""
    global _current
    with _lock:
        if _current is None or _current[0] != id(bundle) or _current[1].bundle is not bundle:
            _current = (id(bundle), UserHistories(bundle))
        return _current[1]
