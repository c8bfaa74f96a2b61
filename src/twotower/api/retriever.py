"""``twotower.Retriever``: the online service's retrieval, called from Python on raw ids.

:meth:`Retriever.recommend` builds the same request ``POST /v1/retrieve`` validates (``RetrieveRequest``),
parses it against the served vocabularies (``parse_request``) and runs it through the service's engine
(store lookup, encoder, index, filters): no second implementation to drift from the HTTP answer.
:meth:`Retriever.encode_users` runs the cold-start path (the events given are the user's history, no cached
state), :meth:`Retriever.encode_items` the exported item vectors of the served model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from ..errors import RequestError
from ..features.inputs import ItemInputs
from ..jobs.serving import build_artifacts
from ..serve.bundle import Bundle, load_bundle
from ..serve.context import build_context, parse_request
from ..serve.engine import Retriever as Engine
from ..serve.health import open_serving_store
from ..serve.metrics import Metrics
from ..serve.schemas import RetrieveRequest
from .data import to_arrow


@dataclass
class Recommendation:
    """One user's answer: ``item_ids`` str [K'] and ``scores`` float32 [K'] (best first; K' <= k when filters
    cut), the retrieval ``path`` ("cached", "cold_start", "fallback"), the versions that produced it. Reranked:
    ``scores`` are the ranker's, ``retrieval_scores`` the index's, and ``ranker_version`` names the ranker."""

    item_ids: np.ndarray
    scores: np.ndarray
    path: str
    model_version: str
    index_version: str
    warnings: list[str] | None = None
    retrieval_scores: np.ndarray | None = None
    ranker_version: str | None = None


class Retriever:
    """An artifact root (``twotower serve-prepare``'s) opened for retrieval in this process."""

    def __init__(self, bundle: Bundle, engine: Engine):
        self.bundle, self.engine = bundle, engine

    @classmethod
    def load(cls, artifacts: str | Path, store_url: str | None = None, hnsw_ef_search: int | None = None) -> Retriever:
        """Open the published version of ``artifacts`` (index, model, item tables) and its feature store
        (default ``sqlite:///ARTIFACTS/states.db``)."""
        root = Path(artifacts)
        bundle = load_bundle(root, ef_search=hnsw_ef_search)
        store = open_serving_store(store_url or f"sqlite:///{(root / 'states.db').resolve()}")
        return cls(bundle, Engine(bundle, store, Metrics()))

    @classmethod
    def from_run(cls, run: Any, artifacts: str | Path, backend: str = "hnsw", **kw) -> Retriever:
        """Assemble ``artifacts`` from a trained run (a :class:`~twotower.api.Run` or its directory: copy the
        model, export items, cache user states, build and publish an index), then open it. ``kw`` go to
        :func:`~twotower.jobs.serving.build_artifacts` (``index_config``, ``recall_floor``, ``as_of``)."""
        build_artifacts(getattr(run, "path", run), artifacts, backend=backend, **kw)
        return cls.load(artifacts)

    def close(self) -> None:
        self.engine.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def recommend(
        self,
        user_id: str,
        recent_events: list[dict] | None = None,
        k: int = 10,
        filters: dict | None = None,
        exclude_item_ids: list[str] | None = None,
        timestamp: int | None = None,
        surface: str | None = None,
        rerank: int | None = None,
    ) -> Recommendation:
        """Top-``k`` items for ``user_id`` now: the body of ``POST /v1/retrieve`` as arguments.

        ``recent_events``: ``[{"item_id", "timestamp", "actions": [...], "surface"}]`` since the cached state;
        ``filters``: ``{"allow_item_ids": [...], "item_features": {"genre": ["Comedy"]}}``; ``rerank``: K', the
        shortlist the published ranker re-scores. A bad argument is a :class:`~twotower.errors.RequestError`
        with the service's message."""
        body = {
            "user_id": user_id,
            "k": k,
            "context": {"recent_events": recent_events or [], "timestamp": timestamp, "surface": surface},
            "exclude_item_ids": exclude_item_ids or [],
            "filters": filters or {},
        }
        if rerank is not None:
            body["rerank"] = {"candidates": rerank}
        return self.recommend_many([body])[0]

    def recommend_many(self, requests: list[dict]) -> list[Recommendation]:
        """Many request bodies (``RetrieveRequest`` dicts) in one batch, as ``POST /v1/retrieve/batch``."""
        bundle = self.engine.bundle
        try:
            parsed = [parse_request(RetrieveRequest.model_validate(b), bundle) for b in requests]
        except ValidationError as exc:
            raise RequestError(f"invalid request: {exc}") from exc
        return [
            Recommendation(r.item_ids, r.scores, r.path, r.model_version, r.index_version, r.warnings,
                           r.retrieval_scores, r.ranker_version)  # fmt: skip
            for r in self.engine.run(parsed)
        ]

    def encode_items(self, item_ids: list[str] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(item ids str [N], vectors float32 [N, D]) of the served model: the given ids (unknown ones are a
        RequestError naming them) or every item."""
        table = self.bundle.items
        names = list(table.ids) if item_ids is None else [str(i) for i in item_ids]
        dense = table.dense(names)
        if (dense < 0).any():
            unknown = [n for n, d in zip(names, dense) if d < 0][:5]
            raise RequestError(f"unknown item ids {unknown}: not in the served model's catalogue")
        text = None if table.text is None else torch.from_numpy(np.asarray(table.text[dense], np.float32))
        inputs = ItemInputs(*(torch.from_numpy(a) for a in table.hashed(names, dense)), text)
        with torch.no_grad():
            vecs = self.bundle.model.encode_items(inputs).float().numpy()
        return table.ids[dense].astype(str), vecs

    def encode_users(self, events: Any, now: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(user ids str [U], vectors float32 [U, D]) from an events table (DataFrame / pyarrow, columns
        ``user_id``, ``item_id``, ``timestamp`` and optionally ``actions`` (a list of names) and ``surface``):
        each user's events, oldest first, are their whole history (the service's cold-start path)."""
        t = to_arrow(events, "events").to_pylist()
        by_user: dict[str, list[dict]] = {}
        for row in sorted(t, key=lambda r: r["timestamp"]):
            ev = {"item_id": str(row["item_id"]), "timestamp": int(row["timestamp"])}
            if row.get("actions"):
                ev["actions"] = list(row["actions"])
            if row.get("surface"):
                ev["surface"] = row["surface"]
            by_user.setdefault(str(row["user_id"]), []).append(ev)
        users = list(by_user)
        bundle = self.engine.bundle
        bodies = [{"user_id": u, "context": {"recent_events": by_user[u], "timestamp": now}} for u in users]
        try:
            parsed = [parse_request(RetrieveRequest.model_validate(b), bundle) for b in bodies]
        except ValidationError as exc:
            raise RequestError(f"invalid events: {exc}") from exc
        B = len(parsed)
        T, D = bundle.model_config.cached_state_shape
        none = np.zeros(B, bool)
        zero = np.zeros(B, np.int64)
        ctx = build_context(bundle, parsed, none, zero, zero)
        with torch.no_grad():
            q = bundle.encoder(torch.zeros(B, T, D), ctx).numpy()
        return np.array(users, dtype=str), q
