"""A feature store that is opened on first use, and opened again on a later call after a failed open.

The service must start, and serve the fallback path, while its store cannot be opened: a SQLite file another
process holds locked (``locking_mode=EXCLUSIVE``), a corrupt file an operator is about to replace. Redis needs
no help (its client connects lazily); for SQLite, :class:`DeferredStore` stands in for the store and tries to
open it on every call, raising :class:`~twotower.store.StoreError` while it cannot. The caller's backoff decides
how often that is: the service's :class:`~twotower.serve.engine.Retriever` skips the store for
``store_retry_s`` after any failure, so a locked file costs one open attempt (at most ``timeout_s``) per window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import StoreError
from .base import STAT_KEYS, FeatureStore, StateBatch, StoreConfig


class DeferredStore:
    """Calls ``opener()`` (e.g. ``lambda: open_store(url, create=False)``) until it succeeds, then forwards every
    call to the store it returned. ``name`` describes the store in errors (no secrets: a redacted URL or a path);
    ``last_error`` is the message of the last failed open (None once open)."""

    def __init__(
        self,
        opener: Callable[[], FeatureStore],
        name: str,
        last_error: str | None = None,
        config: StoreConfig | None = None,
    ) -> None:
        self._opener, self.name, self.last_error = opener, name, last_error
        self.config = config or StoreConfig()
        self._store: FeatureStore | None = None
        self._stats = dict.fromkeys(STAT_KEYS, 0)  # until the store opens
        self._lock = threading.Lock()
        self._closed = False

    @property
    def opened(self) -> bool:
        return self._store is not None

    @property
    def stats(self) -> dict[str, int]:
        return self._store.stats if self._store is not None else self._stats

    def _open(self) -> FeatureStore:
        store = self._store
        if store is not None:
            return store
        with self._lock:  # one open attempt at a time; the others wait for its outcome
            if self._closed:
                raise StoreError(f"feature store {self.name} is closed; open it again with open_store()")
            if self._store is None:
                try:
                    self._store = self._opener()
                except StoreError as exc:
                    self._stats["errors"] += 1
                    self.last_error = str(exc)
                    raise
                self.config, self.last_error = self._store.config, None
            return self._store

    def put_many(
        self,
        user_ids: Sequence[str],
        states: np.ndarray,
        snapshot_ts: np.ndarray,
        last_event_ts: np.ndarray,
        model_version: str,
    ) -> None:
        """See :class:`~twotower.store.FeatureStore`."""
        self._open().put_many(user_ids, states, snapshot_ts, last_event_ts, model_version)

    def get_many(self, user_ids: Sequence[str], model_version: str, shape: tuple[int, int]) -> StateBatch:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().get_many(user_ids, model_version, shape)

    def get_meta(self, user_ids: Sequence[str], model_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().get_meta(user_ids, model_version)

    def delete(self, user_ids: Sequence[str], model_version: str | None = None) -> int:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().delete(user_ids, model_version)

    def stale_users(self, since: int, model_version: str) -> list[str]:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().stale_users(since, model_version)

    def count(self, model_version: str) -> int:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().count(model_version)

    def has_states(self, model_version: str) -> bool:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().has_states(model_version)

    def versions(self) -> dict[str, int]:
        """See :class:`~twotower.store.FeatureStore`."""
        return self._open().versions()

    def close(self) -> None:
        """Close the store if it was opened; later calls raise :class:`StoreError`."""
        with self._lock:
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def __repr__(self) -> str:
        return f"DeferredStore({self.name!r}, opened={self.opened})"
