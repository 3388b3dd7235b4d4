"""Prometheus metrics of one app: requests per route template and status, embed and search latency, batch sizes,
gallery size. Each app owns its registry, so several apps (tests) can live in one process."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "reid_http_requests_total", "HTTP requests by route template and status", labels, registry=self.registry
        )
        self.request_latency = Histogram(
            "reid_http_request_duration_seconds",
            "HTTP request latency by route template and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embed_latency = Histogram(
            "reid_embed_duration_seconds", "Embedder call latency", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.search_latency = Histogram(
            "reid_search_duration_seconds", "Gallery search latency", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.embed_batch = Histogram(
            "reid_embed_batch_size", "Images per embedder call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.gallery_size = Gauge("reid_gallery_size", "Vectors in the gallery", registry=self.registry)
        self.model_info = Gauge(
            "reid_model_info",
            "The served model: 1 for its model_id, variant (fp32, int8, fp16...) and backend",
            ("model_id", "variant", "backend"),
            registry=self.registry,
        )


def _plain_route(scope: Scope) -> str:
    """The path of the app's own plain route (/openapi.json, the docs' static files) that answered, which leaves no
    route in the scope; "unmatched" for a path no route has (one label for them all: bounded)."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        if route.matches(scope)[0] == Match.FULL:
            return getattr(route, "path", None) or "unmatched"
    return "unmatched"


class MetricsMiddleware:
    """Count and time every HTTP request under its route template (``/v1/gallery/{item_id}``), never its raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering
        start = time.perf_counter()

        async def send_and_record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            template = getattr(scope.get("route"), "path", None) or _plain_route(scope)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            labels = (method, template, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_latency.labels(*labels).observe(time.perf_counter() - start)
