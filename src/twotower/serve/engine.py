"""The request path: feature-store lookup -> online head -> ANN search, for a batch of parsed requests.

One :class:`Bundle` reference is read at the start of a batch and used to its end, so a hot swap
(:meth:`Retriever.swap`) never mixes versions inside a request: requests in flight finish on the old bundle.

The service opens the store read-only (:func:`open_serving_store`): a missing SQLite file is an error at
start-up, never a new empty store; a store that exists but cannot be opened yet (locked, corrupt) is opened
later, and the service serves the fallback path meanwhile. A store without a single state of the served model
version is reported (a warning, and ``"store": "empty for model <v>"`` in ``/readyz``).

Store failures degrade, never fail: a store that is down or too slow makes the batch take the ``fallback``
path (the head's learned no-state vector), counts a store error and logs a rate-limited warning. The store is
then skipped for ``retry_s`` seconds (a paused Redis would otherwise add its timeout to every request) and
probed again after, so service recovers by itself when the store returns. The ``/readyz`` probe
(:meth:`Retriever.check_store`) keeps to the same window.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import StoreConfigError, StoreError
from ..store import FeatureStore, open_store
from ..store.base import redact_url
from ..store.deferred import DeferredStore
from .artifacts import Bundle
from .context import ParsedRequest, build_context, seen_items, seen_items_batch
from .metrics import Metrics

log = logging.getLogger(__name__)
# Why a filtered request has no item, by (allow-list given, item-feature filter given); sent in ``warnings``.
EMPTY_FILTER = {
    (True, False): "no id of filters.allow_item_ids is an item of the served corpus",
    (False, True): "no item has every requested filters.item_features value",
    (True, True): "no item is both in filters.allow_item_ids and has the filters.item_features",
}


@dataclass
class Result:
    """One request's answer. ``item_ids`` object [K'], ``scores`` float32 [K'] (K' <= k: filters may cut)."""

    item_ids: np.ndarray
    scores: np.ndarray
    path: str
    model_version: str
    index_version: str
    warnings: list[str] | None = None  # why filters matched little or nothing; only in the body when non-empty

    def as_json(self, took_ms: float) -> dict:
        """The ``RetrieveResponse`` body (built directly: no pydantic on the hot path)."""
        items = [{"item_id": i, "score": s} for i, s in zip(self.item_ids.tolist(), self.scores.tolist())]
        body = {"items": items, "model_version": self.model_version, "index_version": self.index_version,
                "path": self.path, "took_ms": took_ms}  # fmt: skip
        if self.warnings:
            body["warnings"] = self.warnings
        return body


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


def open_serving_store(url: str) -> FeatureStore:
    """The service's side of the store at ``url``. A wrong URL or a missing SQLite file raises
    :class:`~twotower.store.StoreConfigError` (the service must not start: retrying cannot help). A store that
    exists but cannot be opened now (locked by another process, corrupt) becomes a :class:`DeferredStore` that
    is opened on a later request: the service starts, serves the fallback path and reports the store as
    unavailable until then."""
    try:
        return open_store(url, create=False)
    except StoreConfigError:
        raise
    except StoreError as exc:  # the caller logs it (Service.start) and /readyz reports it
        return DeferredStore(lambda: open_store(url, create=False), redact_url(url), last_error=str(exc))


def check_serving_store(url: str) -> None:
    """Raise :class:`~twotower.store.StoreConfigError` when the service would refuse to start on ``url`` (a wrong
    URL, a missing SQLite file); other store failures pass (the service starts on the fallback path). For the
    CLI, so that a typo is one error line before any worker process starts."""
    try:
        open_store(url, create=False).close()
    except StoreConfigError:
        raise
    except StoreError:
        pass


class Retriever:
    """Runs batches of requests against the current bundle and a feature store."""

    def __init__(self, bundle: Bundle, store: FeatureStore, metrics: Metrics, retry_s: float = 1.0) -> None:
        self.bundle = bundle
        self.store = store
        self.metrics = metrics
        self.retry_s = retry_s
        self._skip_store_until = 0.0
        self._checked: tuple[str | None, float] = (None, 0.0)  # (model version, no probe before) of check_store
        self._check_lock = threading.Lock()
        self._warn = RateLimitedLog(log)
        self.store_ok = not isinstance(store, DeferredStore)
        self.store_error: str | None = getattr(store, "last_error", None)  # the last failure, for /readyz
        self.empty_for: str | None = None  # a model version the store holds no state of (see check_store)

    def swap(self, bundle: Bundle) -> Bundle:
        """Serve ``bundle`` from the next batch on (one reference assignment: atomic); returns the old one."""
        old, self.bundle = self.bundle, bundle
        return old

    def store_status(self) -> str:
        """What ``/readyz`` reports: "ok", "unavailable" or "empty for model <v>" (no state of the served version:
        every user gets the cold-start path)."""
        if not self.store_ok:
            return "unavailable"
        if self.empty_for is not None and self.empty_for == self.bundle.model_version:
            return f"empty for model {self.empty_for}"
        return "ok"

    def check_store(self) -> str:
        """Probe the store for the served model version (one existence query; opens a deferred store) and
        return :meth:`store_status`. Warns once per version when the store holds none of its states.

        Throttled like the request path: after a probe of a version, or while requests skip a failed store,
        the next ``retry_s`` seconds return :meth:`store_status` without touching the store. ``/readyz`` probes on
        every call while the store is not "ok": unthrottled, that is a Redis SCAN of the whole keyspace (every
        state expired) or an open attempt on a locked SQLite file (holding the lock requests wait on) per poll.
        A new version (a reload) is probed at once."""
        version = self.bundle.model_version
        now = time.monotonic()
        with self._check_lock:  # concurrent probes: one goes to the store, the others return the cached status
            checked, not_before = self._checked
            if version == checked and now < max(not_before, self._skip_store_until):
                return self.store_status()
            self._checked = (version, now + self.retry_s)
        try:
            has = self.store.has_states(version)
        except StoreError as exc:
            self._skip_store_until = max(self._skip_store_until, now + self.retry_s)  # requests skip it too
            self.store_ok, self.store_error = False, str(exc)
            return self.store_status()
        self.store_ok, self.store_error = True, None
        if has:
            self.empty_for = None
        elif self.empty_for != version:
            self.empty_for = version
            log.warning(
                "feature store %r holds no state for model %s: every user gets the cold_start path; fill it "
                "with `twotower refresh-states --run ARTIFACTS/models/%s --store URL` (or serve-prepare), or "
                "point TWOTOWER_STORE_URL at the store that has them",
                self.store,
                version,
                version,
            )
        return self.store_status()

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
                self.store_ok, self.store_error = False, str(exc)
                self.metrics.store_errors.inc()
                self._warn.warning("feature store failed (%s); serving the fallback path", exc)
            else:
                self.store_ok, self.store_error = True, None
                if self.empty_for is not None and sb.found.any():
                    self.empty_for = None  # filled since the last check
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
        warnings: list[list[str]] = [[] for _ in reqs]
        for b, r in enumerate(reqs):
            if b not in found:
                ids, scores, warnings[b] = self._search(bundle, q[b : b + 1], r)
                found[b] = ids, scores
        return [
            Result(
                bundle.items.ids[found[b][0]],
                found[b][1],
                paths[b],
                bundle.model_version,
                bundle.index_version,
                warnings[b],
            )
            for b in range(len(reqs))
        ]

    @staticmethod
    def _search(bundle: Bundle, q: np.ndarray, r: ParsedRequest) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Top-k for one query [1, D] with its seen items excluded inside the index search: (dense ids int64 [K'],
        scores float32 [K'], warnings). The warnings name the allow-list ids and feature values that match
        nothing, then why the answer is empty, if it is; they come from the id lookup and the feature match
        the filter needs anyway (one each per request, in the worker, never on the event loop)."""
        warnings: list[str] = []
        allow = None
        if r.allow is not None:
            dense = bundle.items.dense(r.allow)
            unknown = np.flatnonzero(dense < 0)
            if len(unknown):
                warnings.append(
                    f"filters.allow_item_ids: {len(unknown)} of {len(r.allow)} ids are not items of the served "
                    f"corpus and were ignored (first: {r.allow[unknown[0]]!r}); check the ids"
                )
            allow = dense[dense >= 0]
        if r.features is not None:
            index = bundle.items.features
            by_feature, absent = index.match(r.features)
            what = "" if index.columns is not None else " (or no such column)"
            warnings += [
                f"filters.item_features.{column}: no item has the value(s) {values[:5]}{what}; check the spelling"
                for column, values in absent.items()
            ]
            allow = by_feature if allow is None else np.intersect1d(allow, by_feature)
        if allow is not None and not len(allow):
            warnings.append(EMPTY_FILTER[r.allow is not None, r.features is not None])
            return np.zeros(0, np.int64), np.zeros(0, np.float32), warnings
        ex = seen_items(bundle, r)
        scores, ids = bundle.index.search(q, r.k, exclude=[ex] if len(ex) else None, allow=allow)
        keep = ids[0] >= 0
        if not keep.any():
            warnings.append(
                "every item that passes the filters is excluded (sent in recent_events or exclude_item_ids)"
            )
        return ids[0][keep], scores[0][keep], warnings
