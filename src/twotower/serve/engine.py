"""The request path: feature-store lookup -> online head -> ANN search, for a batch of parsed requests.

One :class:`Bundle` reference is read at the start of a batch and used to its end, so a hot swap
(:meth:`Retriever.swap`) never mixes versions inside a request: requests in flight finish on the old bundle.

Store failures degrade, never fail: a store that is down or too slow makes the batch take the ``fallback``
path (the head's learned no-state vector) and counts a store error; the store's health (its retry window,
the last error, "empty for model <v>") is kept by :class:`~twotower.serve.health.StoreHealth`, so that the
service recovers by itself when the store returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import StoreError
from ..store import FeatureStore
from .bundle import Bundle
from .context import ParsedRequest, build_context, seen_items, seen_items_batch
from .health import RateLimitedLog, StoreHealth
from .histories import histories
from .metrics import Metrics
from .rerank import candidate_inputs, ranker_histories, rerank_scores

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
    retrieval_scores: np.ndarray | None = None  # float32 [K']: the index's scores, when the ranker re-scored
    ranker_version: str | None = None

    def as_json(self, took_ms: float) -> dict:
        """The ``RetrieveResponse`` body (built directly: no pydantic on the hot path)."""
        if self.retrieval_scores is None:
            items = [{"item_id": i, "score": s} for i, s in zip(self.item_ids.tolist(), self.scores.tolist())]
        else:
            items = [{"item_id": i, "score": s, "retrieval_score": r} for i, s, r in
                     zip(self.item_ids.tolist(), self.scores.tolist(), self.retrieval_scores.tolist())]  # fmt: skip
        body = {"items": items, "model_version": self.model_version, "index_version": self.index_version,
                "path": self.path, "took_ms": took_ms}  # fmt: skip
        if self.warnings:
            body["warnings"] = self.warnings
        if self.ranker_version is not None:
            body["ranker_version"] = self.ranker_version
        return body


@dataclass
class Lookup:
    """What the store holds for a batch of ``B`` users (zeros and -1 where it holds nothing, or was skipped)."""

    states: np.ndarray  # float32 [B, T, D]
    found: np.ndarray  # bool [B]: a state of the served model version
    mismatch: np.ndarray  # bool [B]: a state of another model version only
    snapshot_ts: np.ndarray  # int64 [B]: what the state encodes ends before this time
    last_event_ts: np.ndarray  # int64 [B]: the state's last event
    store_ok: bool  # False: the store failed or is skipped, every user takes the fallback path

    def paths(self) -> list[str]:
        """The retrieval path of each user: "cached", "fallback" (no usable state) or "cold_start"."""
        ok = self.store_ok
        return ["cached" if f else ("fallback" if (m or not ok) else "cold_start")
                for f, m in zip(self.found, self.mismatch)]  # fmt: skip


class Retriever:
    """Runs batches of requests against the current bundle and a feature store."""

    def __init__(self, bundle: Bundle, store: FeatureStore, metrics: Metrics, retry_s: float = 1.0) -> None:
        self.bundle = bundle
        self.store = store
        self.metrics = metrics
        self.health = StoreHealth(store, retry_s)
        self._warn = RateLimitedLog(log)

    def swap(self, bundle: Bundle) -> Bundle:
        """Serve ``bundle`` from the next batch on (one reference assignment: atomic); returns the old one."""
        old, self.bundle = self.bundle, bundle
        return old

    def store_status(self) -> str:
        """What ``/readyz`` reports for the served version: "ok", "unavailable" or "empty for model <v>"."""
        return self.health.status(self.bundle.model_version)

    def check_store(self) -> str:
        """Probe the store for the served version, within the retry window (:meth:`StoreHealth.check`)."""
        return self.health.check(self.bundle.model_version)

    def run(self, reqs: list[ParsedRequest]) -> list[Result]:
        """Serve a batch: lookup -> head for all of it at once, then one ANN search for every request without
        a filter (each query keeps its own exclusions) and one search per request with one."""
        bundle = self.bundle  # read once: the whole batch runs on one version
        self.metrics.batch_size.observe(len(reqs))
        q, paths = self.user_vectors(bundle, reqs)
        self._count_paths(bundle, reqs, paths)
        hits, warnings = self.search(bundle, q, reqs)
        prior = self.rerank(bundle, reqs, hits, warnings)
        ranker = bundle.ranker.version if bundle.ranker is not None else None
        return [
            Result(bundle.items.ids[ids], scores, path, bundle.model_version, bundle.index_version, warn, p,
                   None if p is None else ranker)  # fmt: skip
            for (ids, scores), path, warn, p in zip(hits, paths, warnings, prior)
        ]

    def rerank(
        self,
        bundle: Bundle,
        reqs: list[ParsedRequest],
        hits: list[tuple[np.ndarray, np.ndarray]],
        warnings: list[list[str]],
    ) -> list[np.ndarray | None]:
        """Re-score the shortlists of the requests that ask for it, in place (``hits[b]`` becomes the top k by
        the ranker); returns each request's retrieval scores of its returned items (None: not re-scored).
        Requests without rerank, or with nothing retrieved, keep their first k."""
        out: list[np.ndarray | None] = [None] * len(reqs)
        want = [b for b, r in enumerate(reqs) if r.rerank and len(hits[b][0])]
        if want and bundle.ranker is None:
            self.metrics.rerank.labels("no_ranker").inc(len(want))
            for b in want:
                warnings[b].append("rerank: no ranker is published for this service; answered from retrieval alone "
                                   "(publish one with `twotower publish-ranker`)")  # fmt: skip
            want = []
        rescored = set(want)
        for b, r in enumerate(reqs):  # the others return their first k of the fetched shortlist
            if r.fetch_k > r.k and b not in rescored:
                hits[b] = hits[b][0][: r.k], hits[b][1][: r.k]
        if not want:
            return out
        ranker, data = bundle.ranker, bundle.data
        lo, hi = histories(bundle).span([reqs[b].user_id for b in want])
        sent = [(reqs[b].items, reqs[b].bits, reqs[b].ts, reqs[b].surface) for b in want]
        cfg = ranker.module.cfg
        hist = ranker_histories(bundle.items, data, lo, hi, sent, ranker.history, cfg.num_actions, cfg.time_buckets)
        K = max(len(hits[b][0]) for b in want)
        ids = np.full((len(want), K), -1, np.int64)
        prior = np.zeros((len(want), K), np.float32)
        for j, b in enumerate(want):
            n = len(hits[b][0])
            ids[j, :n], prior[j, :n] = hits[b][0], hits[b][1]
        logits = rerank_scores(ranker.module, hist, candidate_inputs(bundle.items, ids), prior)
        logits[ids < 0] = -np.inf
        self.metrics.rerank.labels("reranked").inc(len(want))
        for j, b in enumerate(want):
            n, k = len(hits[b][0]), reqs[b].k
            top = np.argsort(-logits[j, :n], kind="stable")[:k]
            hits[b] = ids[j, top], logits[j, top]
            out[b] = prior[j, top]
        return out

    def user_vectors(self, bundle: Bundle, reqs: list[ParsedRequest]) -> tuple[np.ndarray, list[str]]:
        """One store read and one forward of the online head (or, unsplit, the cached vectors: ``.unsplit``):
        (user vectors float32 [B, D], path of each)."""
        found = self.lookup(bundle, [r.user_id for r in reqs])
        ctx = build_context(bundle, reqs, found.found, found.snapshot_ts, found.last_event_ts)
        q = bundle.encoder(torch.from_numpy(found.states), ctx).numpy()  # [B, D]
        if not bundle.model_config.online_head:  # an unsplit vector cannot take the events after its snapshot
            unfolded = int(ctx.events.length[torch.from_numpy(found.found)].sum())
            if unfolded:
                self.metrics.unfolded.inc(unfolded)
        return q, found.paths()

    def lookup(self, bundle: Bundle, user_ids: list[str]) -> Lookup:
        """The users' states of the served version: one ``get_many`` of the unique ids, unless the store is
        skipped (it failed less than ``retry_s`` ago); a failure degrades to the fallback path."""
        B, (T, D) = len(user_ids), bundle.state_shape
        now = time.monotonic()
        if not self.health.skipping(now):
            uniq, inverse = np.unique(np.array(user_ids, dtype=object), return_inverse=True)
            try:
                sb = self.store.get_many(list(uniq), bundle.model_version, (T, D))
            except StoreError as exc:  # StoreUnavailable, or a backend error: degrade, do not fail the request
                self.metrics.store_errors.inc()
                self.health.failed(exc, now)
            else:
                self.health.answered(bool(sb.found.any()))
                return Lookup(sb.states[inverse], sb.found[inverse], sb.mismatch[inverse], sb.snapshot_ts[inverse],
                              sb.last_event_ts[inverse], True)  # fmt: skip
        none = np.zeros(B, bool)
        minus = np.full(B, -1, np.int64)
        return Lookup(np.zeros((B, T, D), np.float32), none, none, minus, minus, False)

    def _count_paths(self, bundle: Bundle, reqs: list[ParsedRequest], paths: list[str]) -> None:
        for r, path in zip(reqs, paths):
            self.metrics.paths.labels(path).inc()
            if path == "fallback" and self.health.ok:
                self._warn.warning(
                    "user %r has a state of another model version only (served: %s); serving the fallback path "
                    "(run `twotower refresh-states` for this model)",
                    r.user_id,
                    bundle.model_version,
                )

    def search(
        self, bundle: Bundle, q: np.ndarray, reqs: list[ParsedRequest]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[list[str]]]:
        """Top-k of each request's query ``q`` float32 [B, D], its seen items excluded: ((dense ids int64 [K'],
        scores float32 [K']) per request, warnings per request). Requests without a filter share one search."""
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        plain = [b for b, r in enumerate(reqs) if r.allow is None and r.features is None and r.shortlist is None]
        if plain:
            ex = seen_items_batch(bundle, [reqs[b] for b in plain])
            k = max(reqs[b].fetch_k for b in plain)
            scores, ids = bundle.index.search(q[plain], k, exclude=ex if any(len(e) for e in ex) else None)
            for j, b in enumerate(plain):
                n = reqs[b].fetch_k
                keep = ids[j, :n] >= 0
                found[b] = ids[j, :n][keep], scores[j, :n][keep]
        warnings: list[list[str]] = [[] for _ in reqs]
        for b, r in enumerate(reqs):
            if b not in found:
                ids, scores, warnings[b] = self._search(bundle, q[b : b + 1], r)
                found[b] = ids, scores
        return [found[b] for b in range(len(reqs))], warnings

    @staticmethod
    def _search(bundle: Bundle, q: np.ndarray, r: ParsedRequest) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Top-k for one query [1, D] with its seen items excluded inside the index search: (dense ids int64 [K'],
        scores float32 [K'], warnings); an adaptive index re-scores the request's own ``shortlist``. The warnings
        name the allow-list ids and feature values that match nothing, then why the answer is empty, if it is;
        they come from the id lookup and the feature match the filter needs anyway (one each per request, in the
        worker, never on the event loop)."""
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
        kw = {"shortlist": r.shortlist} if r.shortlist is not None else {}  # adaptive only (checked at parse)
        scores, ids = bundle.index.search(q, r.fetch_k, exclude=[ex] if len(ex) else None, allow=allow, **kw)
        keep = ids[0] >= 0
        if not keep.any():
            warnings.append(
                "every item that passes the filters is excluded (sent in recent_events or exclude_item_ids)"
            )
        return ids[0][keep], scores[0][keep], warnings
