"""Prometheus metrics of one service instance, in its own registry (several apps can live in one test process).

Request counts and latencies are recorded by a pure ASGI middleware (cheaper than a BaseHTTPMiddleware, and
it sees every response, including 413s and validation errors); the retrieval engine counts paths, store
failures and micro-batch sizes; reloads count by result; an info gauge carries the served versions.

Several workers (``twotower serve --workers N``) add up: :func:`multiprocess_dir` gives every worker one
``PROMETHEUS_MULTIPROC_DIR`` before they start, each worker's values live in memory-mapped files there, and a
scrape of any worker reads all of them (prometheus_client's multiprocess mode). Without it a scrape saw the
share of the one worker that answered it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_mp

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
KNOWN_ROUTES = frozenset(
    {
        "/v1/retrieve",
        "/v1/retrieve/batch",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/reload",
        "/openapi.json",
        "/demo",
        "/demo/info",
    }
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


def multiprocess_dir() -> Path:
    """Set up the shared metrics directory for several workers (before they start) and return it.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used and emptied of an earlier run's files (stale counts would
    add to this run's); otherwise a fresh temporary directory, exported to the workers through the environment.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for f in path.glob("*.db"):
            f.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="twotower-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """Remove a directory :func:`multiprocess_dir` made (an operator's own directory stays)."""
    if path.name.startswith("twotower-metrics-"):
        shutil.rmtree(path, ignore_errors=True)


class Metrics:
    """The service's counters, histograms and gauges (summed over workers when the multiprocess directory is set)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
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
        self.rerank = Counter("twotower_rerank", "rerank requests by result (reranked / no_ranker)", ["result"],
                              registry=r)  # fmt: skip
        self.reloads = Counter("twotower_reloads", "admin reloads", ["result"], registry=r)
        self.index_fallbacks = Counter(
            "twotower_index_fallbacks", "starts on an older published index: CURRENT's did not load", registry=r
        )
        # livemax: a version is shown while any live worker serves it (mid-reload, both); ignored in one process
        self.info = Gauge(
            "twotower_served_version",
            "1 for the served versions",
            ["model", "index"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._versions: tuple[str, str] | None = None
        for path in ("cached", "cold_start", "fallback"):
            self.paths.labels(path)  # export zeros, so dashboards see the series before the first event

    def set_versions(self, model_version: str, index_version: str) -> None:
        if self._versions is not None:  # 0 first: in multiprocess mode clear() would leave the file's 1 behind
            self.info.labels(*self._versions).set(0)
        self.info.clear()
        self._versions = (model_version, index_version)
        self.info.labels(model_version, index_version).set(1)

    def render(self) -> bytes:
        """Prometheus text: this process's registry, or every worker's files in multiprocess mode."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        prom_mp.MultiProcessCollector(merged)
        return generate_latest(merged)

    def close(self) -> None:
        """At worker exit: its live gauges stop counting (its counters' files stay, so totals keep them)."""
        if self.multiprocess:
            prom_mp.mark_process_dead(os.getpid())


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
