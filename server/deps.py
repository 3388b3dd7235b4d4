"""The dependencies routes declare with ``Annotated``: the app's resources, ready or not."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.errors import APIError
from server.resources import Resources


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def ready_resources(res: ResourcesDep) -> Resources:
    if res.gallery is None or res.embedder is None:
        raise APIError(
            503, "not_ready", res.not_ready_reason or "not ready", {"Retry-After": str(res.settings.retry_after_s)}
        )
    return res


ReadyDep = Annotated[Resources, Depends(ready_resources)]
