"""Raw JSON request -> the online head's :class:`~twotower.model.Context`, the same one the Featurizer builds.

Training sees contexts built by :meth:`twotower.features.Featurizer.context` from dataset rows; the service
must build the identical tensors from item id strings, action names and timestamps, or the head would be fed
something it never saw (train/serve skew). The rules, mirrored from the Featurizer:

* events the state already encodes (``timestamp < snapshot_ts`` of a found state) are dropped;
* the rest are sorted by timestamp (stable) and the last ``context_len`` kept (an unsplit tower's
  ``max_len``: ``Bundle.context_len``);
* the gap of an event is its timestamp minus the previous event's: the previous sent event, or for the
  first one the state's ``last_event_ts`` (0 without a state); all gaps before the cut at ``context_len``;
* ``since_last`` = request time - the last known event (sent or in the state), bucket 0 when there is none;
* hour and weekday of the request time (UTC); unknown surface names are surface 0 (none);
* item ids known to the dataset use its hash tables (item, author, features); unknown ids are hashed on the
  fly exactly as ``prepare`` does, so they still embed (no author, no features).

Everything after parsing is vectorised over the batch's events: one lexsort, gathers and scatters.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RequestError
from ..features import clock_features, gap_buckets
from ..features.inputs import Context, ItemInputs, UserInputs
from .bundle import Bundle
from .schemas import RetrieveRequest


@dataclass
class ParsedRequest:
    """One request reduced to arrays. Events: ``items`` [n] strings, ``bits`` int64 [n] action bitmasks,
    ``ts`` int64 [n], ``surface`` int64 [n]; request-level fields follow."""

    user_id: str
    k: int
    items: list[str]
    bits: np.ndarray
    ts: np.ndarray
    surface: np.ndarray
    request_surface: int
    request_ts: int
    subject: str | None
    exclude: list[str]
    allow: list[str] | None
    features: dict[str, list[str]] | None = None
    rerank: int = 0  # K': candidates the ranker re-scores (0 = no rerank)
    shortlist: int | None = None  # adaptive index: candidates per result re-scored at full width (None = default)

    @property
    def fetch_k(self) -> int:
        """Items to retrieve: k, or the rerank shortlist when it is longer."""
        return max(self.k, self.rerank)


def parse_request(req: RetrieveRequest, bundle: Bundle, now: int | None = None) -> ParsedRequest:
    """Validate names against the served dataset's vocabularies and flatten ``req`` into arrays."""
    actions, surfaces = bundle.actions, bundle.surfaces
    events = req.context.recent_events
    bits = np.zeros(len(events), np.int64)
    for i, ev in enumerate(events):
        for name in ev.actions:
            bit = actions.get(name)
            if bit is None:
                raise RequestError(
                    f"context.recent_events[{i}].actions: unknown action {name!r}; "
                    f"use names from {sorted(actions, key=actions.get)}"
                )
            bits[i] |= 1 << bit
    ctx = req.context
    allow, features = req.filters.allow_item_ids, req.filters.item_features or None
    check_feature_columns(bundle, features)
    if req.shortlist is not None and not hasattr(bundle.index, "prefix_dim"):
        raise RequestError(
            "shortlist: the served index searches at full width (it is not an adaptive Matryoshka index); drop "
            "the field, or publish an index with --prefix-dim"
        )
    return ParsedRequest(
        user_id=req.user_id,
        k=req.k,
        items=[ev.item_id for ev in events],
        bits=bits,
        ts=np.fromiter((ev.timestamp for ev in events), np.int64, len(events)),
        surface=np.fromiter((surfaces.get(ev.surface, 0) for ev in events), np.int64, len(events)),
        request_surface=surfaces.get(ctx.surface, 0) if ctx.surface is not None else 0,
        request_ts=ctx.timestamp if ctx.timestamp is not None else int(now if now is not None else time.time()),
        subject=ctx.subject_item_id,
        exclude=req.exclude_item_ids,
        allow=allow,
        features=features,
        rerank=req.rerank.candidates if req.rerank is not None else 0,
        shortlist=req.shortlist,
    )


def check_feature_columns(bundle: Bundle, features: dict[str, list[str]] | None) -> None:
    """Refuse item-feature columns the served dataset does not have (a typo such as "genres" for "genre"
    would otherwise silently return no item). Set lookups only: this runs on the event loop. The ids and values
    that match nothing are explained by the worker, from the lookups the search does anyway
    (:meth:`~twotower.serve.engine.Retriever.run`)."""
    columns = bundle.items.features.columns
    if not features or columns is None:
        return
    bad = [c for c in features if c not in columns]
    if bad and not columns:
        raise RequestError("filters.item_features: the served dataset has no item features; drop the filter")
    if bad:
        raise RequestError(
            f"filters.item_features: unknown item-feature column {bad[0]!r}; use columns from {sorted(columns)}"
        )


def build_context(
    bundle: Bundle, reqs: list[ParsedRequest], found: np.ndarray, snapshot_ts: np.ndarray, last_event_ts: np.ndarray
) -> Context:
    """The head's context for ``B`` parsed requests given the store's answer (``found`` bool [B],
    ``snapshot_ts``/``last_event_ts`` int64 [B]); see the module docstring for the rules."""
    cfg = bundle.model_config
    B, C, H = len(reqs), bundle.context_len, cfg.num_hashes
    table = bundle.items
    F = table.feat.shape[1]
    counts = np.fromiter((len(r.items) for r in reqs), np.int64, B)
    req = np.repeat(np.arange(B), counts)
    ts = np.concatenate([r.ts for r in reqs]) if B else np.zeros(0, np.int64)
    bits = np.concatenate([r.bits for r in reqs]) if B else np.zeros(0, np.int64)
    surf = np.concatenate([r.surface for r in reqs]) if B else np.zeros(0, np.int64)
    items = np.array(list(itertools.chain.from_iterable(r.items for r in reqs)), dtype=object)
    # the latest known event per request, over everything the client sent and the state
    last_known = np.where(found, last_event_ts, -1)
    if len(ts):
        np.maximum.at(last_known, req, ts)

    keep = ~(found[req] & (ts < snapshot_ts[req]))  # already inside the cached state
    order = np.lexsort((ts[keep], req[keep]))  # by request, then time; lexsort is stable (ties keep order)
    sel = np.flatnonzero(keep)[order]
    req, ts, bits, surf, items = req[sel], ts[sel], bits[sel], surf[sel], items[sel]
    first = np.ones(len(req), bool)
    first[1:] = req[1:] != req[:-1]
    base = np.where(found & (last_event_ts >= 0), last_event_ts, -1)[req]
    prev = np.empty_like(ts)
    prev[1:] = ts[:-1]
    gap = np.where(first, np.where(base >= 0, ts - base, 0), ts - prev)
    # position among the request's kept events, and the slot among its last C
    n_kept = np.bincount(req, minlength=B)
    start = np.cumsum(n_kept) - n_kept
    pos = np.arange(len(req)) - start[req]
    drop = np.maximum(n_kept - C, 0)[req]
    use = pos >= drop
    r_use, slot = req[use], (pos - drop)[use]

    dense = table.dense(list(items[use]))
    h_item, h_author, h_feat = table.hashed(list(items[use]), dense)
    hist_item = np.zeros((B, C, H), np.int64)
    hist_author = np.zeros((B, C, H), np.int64)
    hist_feat = np.zeros((B, C, F), np.int64)
    hist_item[r_use, slot], hist_author[r_use, slot], hist_feat[r_use, slot] = h_item, h_author, h_feat
    A = max(cfg.num_actions, 1)
    actions = np.zeros((B, C, A), np.float32)
    actions[r_use, slot] = (bits[use][:, None] >> np.arange(A)) & 1
    if not cfg.num_actions:
        actions[:] = 0.0
    ev_surface = np.zeros((B, C), np.int64)
    ev_surface[r_use, slot] = surf[use]
    ev_gap = np.zeros((B, C), np.int64)
    ev_gap[r_use, slot] = gap_buckets(gap[use], cfg.time_buckets)
    length = np.minimum(n_kept, C).astype(np.int64)

    req_ts = np.fromiter((r.request_ts for r in reqs), np.int64, B)
    since = np.where(last_known >= 0, req_ts - last_known, 0)
    hour, weekday = clock_features(req_ts)
    has_subj = np.fromiter((r.subject is not None for r in reqs), bool, B)
    s_item, s_author = np.zeros((B, H), np.int64), np.zeros((B, H), np.int64)
    s_feat = np.zeros((B, F), np.int64)
    if has_subj.any():  # most requests have no subject: skip the lookup (and on-the-fly hashing) entirely
        subj_ids = [r.subject for r in reqs if r.subject is not None]
        s_item[has_subj], s_author[has_subj], s_feat[has_subj] = table.hashed(subj_ids, table.dense(subj_ids))
    # the head ignores the user fields of context events
    events = UserInputs.events_only(hist_item, hist_author, hist_feat, actions, ev_surface, ev_gap, length)
    return Context(
        events=events,
        surface=torch.from_numpy(np.fromiter((r.request_surface for r in reqs), np.int64, B)),
        hour=torch.from_numpy(hour),
        weekday=torch.from_numpy(weekday),
        since_last=torch.from_numpy(gap_buckets(since, cfg.time_buckets)),
        subject=ItemInputs(torch.from_numpy(s_item), torch.from_numpy(s_author), torch.from_numpy(s_feat)),
    )


def seen_items(bundle: Bundle, r: ParsedRequest) -> np.ndarray:
    """Dense ids to exclude for one request: its ``exclude_item_ids`` and every sent event's item. int64 [m]."""
    return seen_items_batch(bundle, [r])[0]


def seen_items_batch(bundle: Bundle, reqs: list[ParsedRequest]) -> list[np.ndarray]:
    """:func:`seen_items` of every request with ONE id lookup (a lookup call costs more than its ids)."""
    ids = [r.exclude + r.items for r in reqs]
    d = bundle.items.dense([i for one in ids for i in one])
    parts = np.split(d, np.cumsum([len(one) for one in ids])[:-1])
    return [np.unique(x[x >= 0]) for x in parts]
