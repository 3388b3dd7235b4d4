"""Liveness, readiness and Prometheus metrics: open to probes, never refused by the in-flight bound."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import MetricsDep, ResourcesDep
from server.errors import APIError, error_responses
from server.schemas import Health, Readiness

router = APIRouter(tags=["health"])
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


@router.get("/healthz", response_model=Health, responses=error_responses(500))
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=error_responses(500, 503))
async def readyz(res: ResourcesDep) -> Readiness:
    """Ready to search: the embedder answers and the gallery was built with this model."""
    reason = await res.readiness()
    if reason:
        raise APIError(503, "not_ready", reason, {"Retry-After": str(res.settings.retry_after_s)})
    assert res.embedder is not None and res.gallery is not None  # ready: both are up
    return Readiness(
        status="ready",
        model_id=res.spec.model_id,
        variant=res.embedder.variant,
        backend=res.settings.backend,
        gallery_size=len(res.gallery),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}, **error_responses(500)},
)
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
