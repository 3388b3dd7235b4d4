"""The dependencies routes declare with ``Annotated``, one per resource: the settings, the metrics, the embedder and
the gallery (the last two answer 503 while the server is not ready), and the lifespan's resources for the probes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.errors import APIError
from server.metrics import Metrics
from server.resources import Resources, ServedEmbedder, ServedGallery
from server.settings import Settings


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(res: ResourcesDep) -> Settings:
    return res.settings


async def get_metrics(res: ResourcesDep) -> Metrics:
    return res.metrics


def _not_ready(res: Resources) -> APIError:
    return APIError(
        503, "not_ready", res.not_ready_reason or "not ready", {"Retry-After": str(res.settings.retry_after_s)}
    )


async def ready_embedder(res: ResourcesDep) -> ServedEmbedder:
    if res.served_embedder is None or res.served_gallery is None:
        raise _not_ready(res)
    return res.served_embedder


async def ready_gallery(res: ResourcesDep) -> ServedGallery:
    if res.served_embedder is None or res.served_gallery is None:
        raise _not_ready(res)
    return res.served_gallery


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EmbedderDep = Annotated[ServedEmbedder, Depends(ready_embedder)]
GalleryDep = Annotated[ServedGallery, Depends(ready_gallery)]
