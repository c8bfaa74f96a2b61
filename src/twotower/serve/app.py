"""The FastAPI app: thin routes that validate a schema, call the engine through the micro-batcher, return JSON.

Endpoints: ``POST /v1/retrieve``, ``POST /v1/retrieve/batch``, ``GET /healthz`` (the process is alive),
``GET /readyz`` (a consistent bundle is loaded), ``GET /metrics`` (Prometheus), ``POST /admin/reload``
(bearer token; loads what ``ROOT/index/CURRENT`` names and swaps it in; a failed load keeps the current
version serving and answers 409 with the reason). Every 4xx body is ``{"error": ..., "detail": [...]}``
with a message that says what to change.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RequestError
from .artifacts import Bundle, load_bundle
from .batcher import MicroBatcher
from .context import parse_request
from .engine import Retriever, open_serving_store
from .fastpath import RetrieveFastPath
from .limits import BodySizeLimit
from .metrics import Metrics, MetricsMiddleware
from .schemas import BatchRequest, BatchResponse, ErrorResponse, ReloadResponse, RetrieveRequest, RetrieveResponse
from .settings import ServeSettings

log = logging.getLogger(__name__)
ERRORS = {
    401: {"model": ErrorResponse, "description": "missing bearer token"},
    403: {"model": ErrorResponse, "description": "wrong token"},
    413: {"model": ErrorResponse, "description": "body larger than TWOTOWER_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "body sent without Content-Type: application/json"},
    422: {"model": ErrorResponse, "description": "invalid request; the message names the field and the fix"},
}


GENERATION_FILE = ".reload-generation"


def _freeze_heap() -> None:
    """Collect what is young, then move everything alive now (~226k tracked objects with a 1M-item bundle,
    mostly imported library code) out of the cyclic GC's reach. A full collection over them takes ~100 ms,
    and CPython runs one whenever enough new objects have survived, stalling every request in flight: that
    was the benchmark's ~230 ms max latency.

    After a reload there is no ``gc.unfreeze()``: the old bundle, though frozen, is freed by reference
    counting once its last request is done (measured: RSS back to before the load, and a full collection
    afterwards found 0 unreachable objects), and unfreezing would cost that ~100 ms stall again. Right after
    a reload this collects only the new bundle's young objects: 0.5 ms on the 1M-item benchmark bundle.
    ``tests/test_serve_head.py`` checks that nothing in a bundle forms a cycle that would keep it alive."""
    gc.collect()
    gc.freeze()


def _read_generation(root) -> str:
    try:
        return (root / GENERATION_FILE).read_text().strip()
    except OSError:
        return ""


def _write_generation(root) -> str:
    """Announce a successful reload to the other worker processes (atomic replace of a small file)."""
    gen = f"{time.time_ns()}-{os.getpid()}"
    tmp = root / f".{GENERATION_FILE}.tmp-{os.getpid()}"
    tmp.write_text(gen + "\n")
    os.replace(tmp, root / GENERATION_FILE)
    return gen


class Service:
    """What the routes share: settings, metrics, the retriever (current bundle + store) and the batcher.

    With several worker processes a reload request reaches one of them; that worker then bumps
    ``ROOT/.reload-generation`` and every other worker, polling it, reloads the same published version.
    """

    def __init__(self, settings: ServeSettings, bundle: Bundle | None = None) -> None:
        self.settings, self.metrics = settings, Metrics()
        self._preloaded = bundle
        self.retriever: Retriever | None = None
        self.batcher: MicroBatcher | None = None
        self.reload_lock = asyncio.Lock()
        self.last_reload_error: str | None = None
        self._generation = ""
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        import torch

        from ..errors import StoreConfigError
        from ..index import set_faiss_threads

        s = self.settings
        torch.set_num_threads(s.torch_threads)
        set_faiss_threads(s.faiss_threads)
        try:  # a missing store or a wrong URL stops the start; a locked or corrupt one degrades (fallback path)
            store = await asyncio.to_thread(open_serving_store, s.resolved_store_url())
        except StoreConfigError as exc:
            log.error("cannot serve: %s", exc)
            raise
        # the store first on purpose: a wrong store URL fails before a large bundle is loaded
        try:
            bundle = self._preloaded or await asyncio.to_thread(
                load_bundle, s.artifacts, s.hnsw_ef_search, s.trace_head
            )
            self._preloaded = None
            retriever = Retriever(bundle, store, self.metrics, retry_s=s.store_retry_s)
            status = await asyncio.to_thread(retriever.check_store)
        except BaseException:  # the lifespan never calls stop() after a failed start: close what start opened
            store.close()
            raise
        self.retriever = retriever
        if status == "unavailable":
            log.warning(
                "feature store unavailable (%s); serving the fallback path and retrying every %s s",
                self.retriever.store_error,
                s.store_retry_s,
            )
        self.batcher = MicroBatcher(self.retriever.run, s.micro_batch, s.micro_batch_wait_ms / 1000.0)
        _freeze_heap()
        self.metrics.set_versions(bundle.model_version, bundle.index_version)
        log.info("serving model %s with index %s from %s", bundle.model_version, bundle.index_version, s.artifacts)
        self._generation = _read_generation(s.artifacts)
        if s.reload_poll_s > 0:
            self._watcher = asyncio.create_task(self._watch_generation())

    async def _watch_generation(self) -> None:
        """Reload when another worker announced a reload (a failed one is logged and reported by /readyz)."""
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            gen = await asyncio.to_thread(_read_generation, self.settings.artifacts)
            if gen and gen != self._generation and not self.reload_lock.locked():
                self._generation = gen
                try:
                    await self.reload(announce=False)
                except HTTPException:
                    pass  # reload() logged it and keeps serving the current version

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.batcher is not None:
            await self.batcher.close()
        if self.retriever is not None:
            self.retriever.store.close()

    async def reload(self, announce: bool = True) -> ReloadResponse:
        """Load the published version and swap it in; on any failure keep serving and raise a 409.

        ``announce``: tell the other worker processes (see the class docstring)."""
        t0 = time.perf_counter()
        if self.reload_lock.locked():
            raise HTTPException(409, "a reload is already running; retry when it has finished")
        async with self.reload_lock:
            old = self.retriever.bundle
            try:
                s = self.settings
                new = await asyncio.to_thread(load_bundle, s.artifacts, s.hnsw_ef_search, s.trace_head)
            except Exception as exc:  # anything unloadable: the current version must keep serving
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                self.metrics.reloads.labels("error").inc()
                log.error("reload failed, still serving %s / %s: %s", old.model_version, old.index_version, exc)
                raise HTTPException(
                    409,
                    f"reload failed; still serving model {old.model_version} index {old.index_version}. "
                    f"Fix or roll back the published artifacts, then reload again. Cause: {self.last_reload_error}",
                ) from exc
            self.retriever.swap(new)
            await asyncio.to_thread(self.retriever.check_store)  # warns when the store has no state of the new version
            _freeze_heap()  # the old bundle is freed by refcount once its requests in flight are done
            if announce:
                self._generation = await asyncio.to_thread(_write_generation, self.settings.artifacts)
            self.last_reload_error = None
            self.metrics.reloads.labels("ok").inc()
            self.metrics.set_versions(new.model_version, new.index_version)
        changed = (new.model_version, new.index_version) != (old.model_version, old.index_version)
        log.info("reloaded: model %s index %s (changed: %s)", new.model_version, new.index_version, changed)
        return ReloadResponse(
            changed=changed,
            model_version=new.model_version,
            index_version=new.index_version,
            previous_model_version=old.model_version,
            previous_index_version=old.index_version,
            took_ms=round(1000 * (time.perf_counter() - t0), 1),
        )


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_admin(service: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer-token check for /admin/*: 401 without a token, 403 with a wrong one (constant-time compare)."""
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "send the admin token as `Authorization: Bearer <TWOTOWER_ADMIN_TOKEN>`",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    given = authorization[len("Bearer ") :].encode()
    if not secrets.compare_digest(given, service.settings.admin_token.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin token; use the value of TWOTOWER_ADMIN_TOKEN the server runs with")


def _json(body: dict, status: int = 200) -> Response:
    # orjson: a 100-item response costs ~10x less to encode than with json.dumps, on the hot path of every request
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json`` (what FastAPI parses as JSON), parameters ignored."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _json_position(doc: str | bytes, pos: int) -> tuple[int, int]:
    """1-based (line, column) of character ``pos`` in ``doc``."""
    doc = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else str(doc)
    line = doc.count("\n", 0, pos) + 1
    return line, pos - (doc.rfind("\n", 0, pos) + 1) + 1


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    content_type = request.headers.get("content-type")
    if any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors) and not _is_json(content_type):
        # FastAPI does not parse a body without a JSON content type, then reports "not a valid dictionary"
        got = f"got {content_type[:100]!r}" if content_type else "the request has none"
        return _json({"error": f"send the body as JSON with the header Content-Type: application/json ({got})"}, 415)
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:  # its loc is ("body", character offset): say where instead of naming a field "22"
        loc = tuple(bad_json.get("loc", ()))
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        line, col = _json_position(exc.body or "", pos)
        reason = (bad_json.get("ctx") or {}).get("error", "JSON decode error")
        msg = (
            f"the body is not valid JSON: {reason} at line {line} column {col} (character {pos}); send one JSON object"
        )
        return _json({"error": msg, "detail": [{"loc": "body", "msg": msg, "type": "json_invalid"}]}, 422)
    detail = [
        {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in detail[:3]) + (" ..." if len(detail) > 3 else "")
    return _json({"error": f"invalid request, change {summary}", "detail": detail}, 422)


def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    resp = _json({"error": str(exc.detail)}, exc.status_code)
    for k, v in (exc.headers or {}).items():
        resp.headers[k] = v
    return resp


def _request_error(_: Request, exc: RequestError) -> Response:
    return _json({"error": str(exc)}, 422)


def create_app(settings: ServeSettings | None = None, bundle: Bundle | None = None) -> FastAPI:
    """The service as an ASGI app. ``bundle``: serve this already-loaded bundle first (tests, benchmarks)."""
    settings = settings or ServeSettings()
    service = Service(settings, bundle)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="twotower retrieval",
        version="1",
        description="Top-K items for a user right now: feature-store state + online head + ANN index.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestError, _request_error)

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=ERRORS)
    async def retrieve(req: RetrieveRequest, svc: ServiceDep) -> Response:
        """Top-``k`` items for one user; the user's recent and excluded items are never returned."""
        t0 = time.perf_counter()
        parsed = parse_request(req, svc.retriever.bundle)
        [res] = await svc.batcher.submit([parsed])
        return _json(res.as_json(round(1000 * (time.perf_counter() - t0), 3)))

    @app.post("/v1/retrieve/batch", response_model=BatchResponse, responses=ERRORS)
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
        return _json({"results": [r.as_json(took) for r in results], "took_ms": took})

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is up and its event loop answers."""
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(svc: ServiceDep) -> Response:
        """Ready when a bundle whose model, index and item tables agree is loaded (checked at load). ``store``:
        "ok", "unavailable" (requests take the fallback path; ``store_error`` says why) or "empty for model <v>"
        (no state of the served version: every user is cold-start)."""
        r = svc.retriever
        if r is None:
            return _json({"error": "artifacts are still loading; retry shortly"}, 503)
        b = r.bundle
        store = r.store_status()
        if store != "ok":  # probe again (throttled: store_retry_s): a store filled, unlocked or restarted shows up
            store = await asyncio.to_thread(r.check_store)
        return _json({"status": "ready", "model_version": b.model_version, "index_version": b.index_version,
                      "items": len(b.index), "store": store, "store_error": r.store_error,
                      "last_reload_error": svc.last_reload_error})  # fmt: skip

    @app.get("/metrics")
    async def metrics(svc: ServiceDep) -> Response:
        """Prometheus text format: requests, latency histogram, retrieval paths, store errors, versions."""
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResponse, responses={**ERRORS, 409: {"model": ErrorResponse}})
    async def reload(svc: ServiceDep, _: Annotated[None, Depends(require_admin)]) -> ReloadResponse:
        """Swap to the version ``ROOT/index/CURRENT`` names; requests in flight finish on the old one."""
        return await svc.reload()

    if settings.fast_path:
        app.add_middleware(RetrieveFastPath, service=service)  # innermost: after the size limit and metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and multi-worker runs): settings from ``TWOTOWER_*``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServeSettings())
