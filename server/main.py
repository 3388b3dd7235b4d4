"""The app factory: ``create_app(settings)``; ``uvicorn_config(settings, app)``, how uvicorn serves it (deadlines and
connection limits from the settings, for ``python -m server`` and the tests alike); and ``app`` for ``uvicorn
server.main:app`` (settings from REID_*, without the connection guards)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from embedders.base import Embedder
from server import raw_search
from server.console.routes import build_router as console_router
from server.errors import install_error_handlers
from server.metrics import Metrics, MetricsMiddleware
from server.middleware import (
    BodyDeadlineMiddleware,
    BodySizeLimitMiddleware,
    InFlightLimit,
    RequestIdMiddleware,
    UnhandledErrorMiddleware,
    guarded_protocol,
)
from server.resources import Resources
from server.routes import gallery, health, identities, search, tracks
from server.settings import Settings


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts. ``embedder`` replaces the one settings describe."""
    settings = settings or Settings()
    metrics = Metrics()
    resources = Resources(settings, metrics, embedder)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await resources.start()
        try:
            yield
        finally:
            await resources.close()

    # Outermost first: every answer, refusals included, gets a request id and is counted. The in-flight bound is
    # not here: it is a dependency (below), so that it counts requests whose body is in, not uploads in progress.
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(UnhandledErrorMiddleware),
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(BodyDeadlineMiddleware, timeout_s=settings.body_timeout_s),
        Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID"],
            )
        )
    # Every route's first dependency; FastAPI solves dependencies only after it has read and parsed the body.
    admission = InFlightLimit(settings.max_in_flight, settings.retry_after_s, exempt=health.PROBE_PATHS)
    # Swagger UI (/docs) and ReDoc (/redoc) from the pinned package's own files, never a CDN: they work offline.
    app = FastAPIOffline(
        title="apnet-reid",
        summary="Person re-identification retrieval: send a person crop, get the gallery identities it matches.",
        version="0.1.0",
        lifespan=lifespan,
        middleware=middleware,
        dependencies=[Depends(admission, scope="function")],
    )
    app.state.resources = resources
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(raw_search.router)  # before search.router: it takes the image-body requests of the same path
    app.include_router(search.router)
    app.include_router(gallery.router)
    app.include_router(tracks.router)
    app.include_router(identities.router)
    app.include_router(health.router)
    app.include_router(console_router(settings))
    raw_search.document(app)
    return app


def uvicorn_config(settings: Settings, app: ASGIApp | str, **options: Any) -> uvicorn.Config:
    """uvicorn serving ``app`` with the deadlines and limits of ``settings`` (``options``: host, port, log_level...).

    The HTTP parser is httptools when it is installed (REID_HTTP_PARSER: auto, httptools or h11); the connection
    guards (request-head deadline and size, connections per client) extend either of uvicorn's protocol classes.
    """
    return uvicorn.Config(
        app,
        http=guarded_protocol(
            settings.header_timeout_s,
            settings.max_connections_per_client,
            settings.max_header_bytes,
            parser=settings.http_parser,
        ),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **options,
    )


app = create_app()
