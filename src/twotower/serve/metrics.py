"""Prometheus metrics of one service instance, in its own registry (several apps can live in one test process).

Request counts and latencies are recorded by a pure ASGI middleware (cheaper than a BaseHTTPMiddleware, and
it sees every response, including 413s and validation errors); the retrieval engine counts paths, store
failures and micro-batch sizes; reloads count by result; an info gauge carries the served versions.
"""

from __future__ import annotations

import time

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
KNOWN_ROUTES = frozenset(
    {"/v1/retrieve", "/v1/retrieve/batch", "/healthz", "/readyz", "/metrics", "/admin/reload", "/openapi.json"}
)


class PrometheusText(Response):
    """A ``/metrics`` answer: Prometheus text exposition, under the content type the OpenAPI schema documents."""

    media_type = CONTENT_TYPE_LATEST


# The /metrics route's documented 200 (without it FastAPI would document application/json).
PROMETHEUS_RESPONSE = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
    }
}


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("twotower_http_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "twotower_http_request_seconds", "HTTP latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.paths = Counter("twotower_retrieve_path", "retrievals by path", ["path"], registry=r)
        self.unfolded = Counter(
            "twotower_unfolded_events",
            "events sent after a cached unsplit user vector's snapshot: excluded from the answer, not folded into "
            "the vector (the hybrid split folds them in)",
            registry=r,
        )
        self.store_errors = Counter("twotower_store_errors", "feature-store lookups that failed", registry=r)
        self.batch_size = Histogram(
            "twotower_micro_batch_size", "requests per engine call", buckets=BATCH_BUCKETS, registry=r
        )
        self.reloads = Counter("twotower_reloads", "admin reloads", ["result"], registry=r)
        self.index_fallbacks = Counter(
            "twotower_index_fallbacks", "starts on an older published index: CURRENT's did not load", registry=r
        )
        self.info = Gauge("twotower_served_version", "1 for the served versions", ["model", "index"], registry=r)
        for path in ("cached", "cold_start", "fallback"):
            self.paths.labels(path)  # export zeros, so dashboards see the series before the first event

    def set_versions(self, model_version: str, index_version: str) -> None:
        self.info.clear()
        self.info.labels(model_version, index_version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: per-route request counts by status and a latency histogram."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # Unknown paths share one label, so scanners cannot blow up the series count.
            route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
