"""The request path: feature-store lookup -> online head -> ANN search, for a batch of parsed requests.

One :class:`Bundle` reference is read at the start of a batch and used to its end, so a hot swap
(:meth:`Retriever.swap`) never mixes versions inside a request: requests in flight finish on the old bundle.

Store failures degrade, never fail: a store that is down or too slow makes the batch take the ``fallback``
path (the head's learned no-state vector), counts a store error and logs a rate-limited warning. The store is
then skipped for ``retry_s`` seconds (a paused Redis would otherwise add its timeout to every request) and
probed again after, so service recovers by itself when the store returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..store import FeatureStore, StoreError
from .artifacts import Bundle
from .context import ParsedRequest, build_context, seen_items, seen_items_batch
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One request's answer. ``item_ids`` object [K'], ``scores`` float32 [K'] (K' <= k: filters may cut)."""

    item_ids: np.ndarray
    scores: np.ndarray
    path: str
    model_version: str
    index_version: str

    def as_json(self, took_ms: float) -> dict:
        """The ``RetrieveResponse`` body (built directly: no pydantic on the hot path)."""
        items = [{"item_id": i, "score": s} for i, s in zip(self.item_ids.tolist(), self.scores.tolist())]
        return {"items": items, "model_version": self.model_version, "index_version": self.index_version,
                "path": self.path, "took_ms": took_ms}  # fmt: skip


class RateLimitedLog:
    """Emit a warning at most once per ``every_s`` seconds, with the number of suppressed repeats."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last, self._suppressed = -float("inf"), 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return
            n, self._suppressed, self._last = self._suppressed, 0, now
        self.logger.warning(msg + (f" ({n} similar warnings suppressed)" if n else ""), *args)


class Retriever:
    """Runs batches of requests against the current bundle and a feature store."""

    def __init__(self, bundle: Bundle, store: FeatureStore, metrics: Metrics, retry_s: float = 1.0) -> None:
        self.bundle = bundle
        self.store = store
        self.metrics = metrics
        self.retry_s = retry_s
        self._skip_store_until = 0.0
        self._warn = RateLimitedLog(log)
        self.store_ok = True

    def swap(self, bundle: Bundle) -> Bundle:
        """Serve ``bundle`` from the next batch on (one reference assignment: atomic); returns the old one."""
        old, self.bundle = self.bundle, bundle
        return old

    def _lookup(self, bundle: Bundle, user_ids: list[str]):
        """(states float32 [B, T, D], found bool [B], mismatch bool [B], snapshot_ts, last_event_ts, store_ok)."""
        B, (T, D) = len(user_ids), bundle.state_shape
        now = time.monotonic()
        if now >= self._skip_store_until:
            uniq, inverse = np.unique(np.array(user_ids, dtype=object), return_inverse=True)
            try:
                sb = self.store.get_many(list(uniq), bundle.model_version, (T, D))
            except StoreError as exc:  # StoreUnavailable, or a backend error: degrade, do not fail the request
                self._skip_store_until = now + self.retry_s
                self.store_ok = False
                self.metrics.store_errors.inc()
                self._warn.warning("feature store failed (%s); serving the fallback path", exc)
            else:
                self.store_ok = True
                return (sb.states[inverse], sb.found[inverse], sb.mismatch[inverse], sb.snapshot_ts[inverse],
                        sb.last_event_ts[inverse], True)  # fmt: skip
        none = np.zeros(B, bool)
        minus = np.full(B, -1, np.int64)
        return np.zeros((B, T, D), np.float32), none, none, minus, minus, False

    def user_vectors(self, bundle: Bundle, reqs: list[ParsedRequest]) -> tuple[np.ndarray, list[str]]:
        """One store read and one forward of the online head: (unit user vectors float32 [B, D], path of each)."""
        states, found, mismatch, snap, last, store_ok = self._lookup(bundle, [r.user_id for r in reqs])
        ctx = build_context(bundle, reqs, found, snap, last)
        q = bundle.encoder(torch.from_numpy(states), ctx).numpy()  # [B, D]
        paths = [
            "cached" if f else ("fallback" if (m or not store_ok) else "cold_start") for f, m in zip(found, mismatch)
        ]
        return q, paths

    def run(self, reqs: list[ParsedRequest]) -> list[Result]:
        """Serve a batch: user vectors for all of it at once, then one ANN search for every request without an
        allow-list (each query keeps its own exclusions) and one search per request with one."""
        bundle = self.bundle  # read once: the whole batch runs on one version
        self.metrics.batch_size.observe(len(reqs))
        q, paths = self.user_vectors(bundle, reqs)
        for r, path in zip(reqs, paths):
            self.metrics.paths.labels(path).inc()
            if path == "fallback" and self.store_ok:
                self._warn.warning(
                    "user %r has a state of another model version only (served: %s); serving the fallback path "
                    "(run `twotower refresh-states` for this model)",
                    r.user_id,
                    bundle.model_version,
                )
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        plain = [b for b, r in enumerate(reqs) if r.allow is None and r.features is None]
        if plain:
            ex = seen_items_batch(bundle, [reqs[b] for b in plain])
            k = max(reqs[b].k for b in plain)
            scores, ids = bundle.index.search(q[plain], k, exclude=ex if any(len(e) for e in ex) else None)
            for j, b in enumerate(plain):
                keep = ids[j, : reqs[b].k] >= 0
                found[b] = ids[j, : reqs[b].k][keep], scores[j, : reqs[b].k][keep]
        for b, r in enumerate(reqs):
            if b not in found:
                found[b] = self._search(bundle, q[b : b + 1], r)
        return [
            Result(bundle.items.ids[found[b][0]], found[b][1], paths[b], bundle.model_version, bundle.index_version)
            for b in range(len(reqs))
        ]

    @staticmethod
    def _search(bundle: Bundle, q: np.ndarray, r: ParsedRequest) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for one query [1, D] with its seen items excluded inside the index search."""
        allow = None
        if r.allow is not None:
            allow = bundle.items.dense(r.allow)
            allow = allow[allow >= 0]
        if r.features is not None:
            by_feature = bundle.items.features.matching(r.features)
            allow = by_feature if allow is None else np.intersect1d(allow, by_feature)
        if allow is not None and not len(allow):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ex = seen_items(bundle, r)
        scores, ids = bundle.index.search(q, r.k, exclude=[ex] if len(ex) else None, allow=allow)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]
