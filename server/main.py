"""The app factory: ``create_app(settings)``, and ``app`` for ``uvicorn server.main:app`` (settings from REID_*)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from embedders.base import Embedder
from server.errors import install_error_handlers
from server.metrics import Metrics, MetricsMiddleware
from server.middleware import (
    BodySizeLimitMiddleware,
    InFlightLimitMiddleware,
    RequestIdMiddleware,
    UnhandledErrorMiddleware,
)
from server.resources import Resources
from server.routes import gallery, health, search
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

    # Outermost first: every answer, refusals included, gets a request id and is counted.
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(UnhandledErrorMiddleware),
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(
            InFlightLimitMiddleware,
            limit=settings.max_in_flight,
            retry_after_s=settings.retry_after_s,
            exempt=health.PROBE_PATHS,
        ),
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
    app = FastAPI(
        title="apnet-reid",
        summary="Person re-identification retrieval: send a person crop, get the gallery identities it matches.",
        version="0.1.0",
        lifespan=lifespan,
        middleware=middleware,
    )
    app.state.resources = resources
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(search.router)
    app.include_router(gallery.router)
    app.include_router(health.router)
    return app


app = create_app()
