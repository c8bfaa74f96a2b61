"""The app factory: builds the FastAPI app from its parts, nothing else.

:func:`create_app` wires the :class:`~.service.Service` lifecycle into the app's lifespan, the routes
(:mod:`.routes`), the error handlers (:mod:`.errors`) and the ASGI middleware: the body-size limit, metrics,
and the ``/v1/retrieve`` fast path; ``/openapi.json`` describes the served version (:mod:`.openapi`).
:func:`app_from_env` is the ``uvicorn --factory`` entry point.
Importing this module imports no training, offline job or data-preparation code.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .bundle import Bundle
from .errors import add_error_handlers
from .fastpath import RetrieveFastPath
from .limits import BodySizeLimit
from .metrics import MetricsMiddleware
from .openapi import served_openapi
from .routes import router
from .service import Service
from .settings import ServeSettings


def create_app(settings: ServeSettings | None = None, bundle: Bundle | None = None) -> FastAPI:
    """The service as an ASGI app. ``bundle``: serve this already-loaded bundle first (tests, benchmarks)."""
    settings = settings or ServeSettings()
    service = Service(settings, bundle)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
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
    app.openapi = served_openapi(app, service)  # the served model's action names etc., see .openapi
    add_error_handlers(app)
    app.include_router(router)
    if settings.demo_enabled():
        from .demo import router as demo_router

        app.include_router(demo_router)
    if settings.fast_path:
        app.add_middleware(RetrieveFastPath, service=service)  # innermost: after the size limit and metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and multi-worker runs): settings from ``TWOTOWER_*``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServeSettings())
