"""HTTP request and response schemas of the online service (pydantic v2; they also make the OpenAPI schema).

Validation is strict and closed: unknown fields, strings where numbers belong, NaN/inf and out-of-range sizes
are refused with a 422 naming the field, before any model or index work is done. Limits keep one request's
cost bounded; the body-size limit (``ServeSettings.max_body_bytes``) stops absurd payloads before parsing.
Responses on the hot path are written as plain dicts by :func:`json_response` (orjson), not through pydantic.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_K = 1000
MAX_RERANK = 1000  # candidates one request may hand the ranker
MAX_EVENTS = 1000  # only the last ``context_len`` after the snapshot reach the head; the rest are exclusions
MAX_IDS = 10_000
MAX_ACTIONS = 32
MAX_TS = 1 << 40  # seconds; year 36812 - anything larger is a unit mistake (ms or us)


def _whole_number(value: object) -> object:
    """``5.0`` -> ``5``: JSON Schema's ``integer`` (what the OpenAPI schema says) includes numbers with a zero
    fraction, which strict pydantic would refuse; ``5.5``, ``"5"`` and ``true`` stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = BeforeValidator(_whole_number)
ItemId = Annotated[str, Field(min_length=1, max_length=256, examples=["Toy Story (1995)"])]
FeatureName = Annotated[str, Field(min_length=1, max_length=128)]
FeatureValue = Annotated[str, Field(min_length=1, max_length=256)]
Timestamp = Annotated[int, Field(ge=0, lt=MAX_TS, description="seconds since the epoch (UTC)"), WholeNumber]


class _Strict(BaseModel):
    # strict: "5" is not 5; forbid: a typo in a field name is an error, not a silently ignored option.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Event(_Strict):
    """One of the user's recent events (e.g. since the feature store's snapshot)."""

    item_id: ItemId
    actions: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=MAX_ACTIONS, description="action names from the dataset (e.g. 'liked')"
    )
    timestamp: Timestamp
    surface: str | None = Field(None, max_length=128, description="where it happened; unknown names count as none")


class RequestContext(_Strict):
    """Real-time context: what happened since the cached state, and where and when the request comes from."""

    recent_events: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS)
    surface: str | None = Field(None, max_length=128, description="surface name; unknown names count as none")
    timestamp: Timestamp | None = Field(None, description="request time; default: now")
    subject_item_id: ItemId | None = Field(None, description="the item the request is about (item page)")


class Filters(_Strict):
    """Restrictions on the returned items."""

    allow_item_ids: list[ItemId] | None = Field(
        None,
        max_length=MAX_IDS,
        description="return only these items (ids not in the served corpus are ignored and named in `warnings`)",
    )
    item_features: dict[FeatureName, Annotated[list[FeatureValue], Field(min_length=1, max_length=MAX_IDS)]] | None = (
        Field(
            None,
            max_length=32,
            description="return only items that have, for every named item-table column, one of the listed "
            'values (e.g. {"genre": ["Comedy", "Drama"]}); a column the dataset does not have is a 422 naming the '
            "known ones; values no item has match nothing and are named in `warnings`",
            examples=[{"genre": ["Comedy", "Drama"]}],
        )
    )


class RerankOptions(_Strict):
    """Re-score the retrieved shortlist with the published ranker (the funnel's second stage)."""

    candidates: Annotated[int, WholeNumber] = Field(
        100, ge=1, le=MAX_RERANK, description="K': items retrieved and re-scored; the top k of them are returned"
    )


class RetrieveRequest(_Strict):
    """Top-k items for one user, right now."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "42",
                    "context": {
                        "recent_events": [
                            {"item_id": "Toy Story (1995)", "actions": ["rated", "loved"], "timestamp": 978300760}
                        ],
                        "surface": "home",
                        "timestamp": 978301000,
                    },
                    "k": 10,
                    "exclude_item_ids": ["Jumanji (1995)"],
                }
            ]
        }
    )

    user_id: str = Field(min_length=1, max_length=256, examples=["42"])
    context: RequestContext = Field(default_factory=RequestContext)
    k: Annotated[int, WholeNumber] = Field(100, ge=1, le=MAX_K)
    exclude_item_ids: list[ItemId] = Field(default_factory=list, max_length=MAX_IDS)
    filters: Filters = Field(default_factory=Filters)
    shortlist: Annotated[int, Field(ge=1, le=64), WholeNumber] | None = Field(
        None,
        description="adaptive (Matryoshka) indexes only: candidates per returned item that the prefix index "
        "fetches and the full-width vectors re-score (default: the published index's); larger is closer to exact",
    )
    rerank: RerankOptions | None = Field(
        None,
        description="retrieve `candidates` items, re-score them with the ranker, return the top k with both scores "
        "(`score`: the ranker's, `retrieval_score`: the index's); without a published ranker the answer is "
        "retrieval's, with a warning",
    )


class BatchRequest(_Strict):
    """Many users in one call (each entry is a full :class:`RetrieveRequest`)."""

    requests: list[RetrieveRequest] = Field(min_length=1, max_length=4096)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    retrieval_score: float | None = Field(None, description="the index's score, when the ranker re-scored the item")


class RetrieveResponse(BaseModel):
    """``path``: "cached" (stored state), "cold_start" (no state for this user), "fallback" (the store is down
    or holds another model version's state; the head ran without a state). ``warnings``: see the field."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"item_id": "Aladdin (1992)", "score": 0.83}],
                    "model_version": "3f2a9c0d1e2b4a5c",
                    "index_version": "20240501T120000-3f2a9c0d-hnsw",
                    "path": "cached",
                    "took_ms": 2.1,
                }
            ]
        }
    )

    items: list[ScoredItem]
    model_version: str
    index_version: str
    path: Literal["cached", "cold_start", "fallback"]
    took_ms: float
    warnings: list[str] | None = Field(
        None,
        description="only when part of the request matched nothing: allow-list ids that are not items, item-feature "
        "values no item has, or why the filters left no item; each names what to check",
    )
    ranker_version: str | None = Field(None, description="the ranker that re-scored the items (rerank requests)")


class BatchResponse(BaseModel):
    results: list[RetrieveResponse]
    took_ms: float


class ReloadResponse(BaseModel):
    changed: bool
    model_version: str
    index_version: str
    previous_model_version: str
    previous_index_version: str
    took_ms: float
    ranker_version: str | None = None
    previous_ranker_version: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/409 body: a one-line ``error`` saying what to change, optional per-field ``detail``."""

    error: str
    detail: list[dict] | None = None


# The error answers every route may give, for the OpenAPI schema.
ERRORS = {
    401: {"model": ErrorResponse, "description": "missing bearer token"},
    403: {"model": ErrorResponse, "description": "wrong token"},
    413: {"model": ErrorResponse, "description": "body larger than TWOTOWER_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "body sent without Content-Type: application/json"},
    422: {
        "model": ErrorResponse,
        "description": "invalid request: a field out of its schema, a body that is not JSON (not UTF-8, nested too "
        "deeply), or a name the served dataset does not know (an action, an item-feature column; a running "
        "service's schema lists them); the message names the field and the fix",
    },
}


def json_response(body: dict, status: int = 200) -> Response:
    """``body`` as an ``application/json`` response."""
    # orjson: a 100-item response costs ~10x less to encode than with json.dumps, on the hot path of every request
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
