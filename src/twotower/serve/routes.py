"""The HTTP routes: validate a schema, call the service, return a schema (as JSON written by orjson).

``POST /v1/retrieve``, ``POST /v1/retrieve/batch``, ``GET /healthz`` (the process is alive), ``GET /readyz``
(a consistent bundle is loaded), ``GET /metrics`` (Prometheus), ``POST /admin/reload`` (bearer token; loads
what ``ROOT/index/CURRENT`` names and swaps it in; a failed load keeps the current version serving and answers
409 with the reason). Valid ``POST /v1/retrieve`` requests are usually answered before they get here, by the
pure-ASGI fast path (:mod:`.fastpath`), with the same answers.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import RequestError
from .context import parse_request
from .deps import AdminDep, ServiceDep
from .metrics import PROMETHEUS_RESPONSE, PrometheusText
from .schemas import (
    ERRORS,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    ReloadResponse,
    RetrieveRequest,
    RetrieveResponse,
    json_response,
)

router = APIRouter()


@router.post("/v1/retrieve", response_model=RetrieveResponse, responses=ERRORS)
async def retrieve(req: RetrieveRequest, svc: ServiceDep) -> Response:
    """Top-``k`` items for one user; the user's recent and excluded items are never returned."""
    t0 = time.perf_counter()
    parsed = parse_request(req, svc.retriever.bundle)
    [res] = await svc.batcher.submit([parsed])
    return json_response(res.as_json(round(1000 * (time.perf_counter() - t0), 3)))


@router.post("/v1/retrieve/batch", response_model=BatchResponse, responses=ERRORS)
async def retrieve_batch(req: BatchRequest, svc: ServiceDep) -> Response:
    """Many users in one call; results in request order."""
    t0 = time.perf_counter()
    if len(req.requests) > svc.settings.max_batch_requests:
        raise RequestError(
            f"requests: {len(req.requests)} users in one call, at most {svc.settings.max_batch_requests}; "
            "split the batch (or raise TWOTOWER_MAX_BATCH_REQUESTS)"
        )
    bundle = svc.retriever.bundle
    parsed = []
    for i, r in enumerate(req.requests):
        try:
            parsed.append(parse_request(r, bundle))
        except RequestError as exc:
            raise RequestError(f"requests[{i}].{exc}") from exc
    results = await svc.batcher.submit(parsed)
    took = round(1000 * (time.perf_counter() - t0), 3)
    return json_response({"results": [r.as_json(took) for r in results], "took_ms": took})


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up and its event loop answers."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(svc: ServiceDep) -> Response:
    """Ready when a bundle whose model, index and item tables agree is loaded (checked at load). ``store``:
    "ok", "unavailable" (requests take the fallback path; ``store_error`` says why) or "empty for model <v>"
    (no state of the served version: every user is cold-start)."""
    body = await svc.readiness()
    if body is None:
        return json_response({"error": "artifacts are still loading; retry shortly"}, 503)
    return json_response(body)


@router.get("/metrics", response_class=PrometheusText, responses=PROMETHEUS_RESPONSE)
async def metrics(svc: ServiceDep) -> PrometheusText:
    """Prometheus text format: requests, latency histogram, retrieval paths, store errors, versions."""
    return PrometheusText(svc.metrics.render())


@router.post("/admin/reload", response_model=ReloadResponse, responses={**ERRORS, 409: {"model": ErrorResponse}})
async def reload(svc: ServiceDep, _: AdminDep) -> ReloadResponse:
    """Swap to the version ``ROOT/index/CURRENT`` names; requests in flight finish on the old one."""
    return await svc.reload()
