"""POST /v1/search with the image as the whole body (``Content-Type: image/jpeg``, ``image/png`` or ``image/webp``)
and the parameters in the query string: the lean form of the multipart search, for clients that send one crop.

It is the same search: the same handler (server.routes.search) runs with the body as its upload, so limits,
deadlines, the error schema and the overload answer are those of the multipart form. The body is a declared body
parameter, so FastAPI reads it in full before it solves the dependencies, and the in-flight bound counts it only
once it is in, as for a form. A request picks the form by its Content-Type: ``RawImageRoute`` matches only an
``image/*`` body, every other request goes on to the multipart route at the same path. The OpenAPI schema shows
both forms as one operation (``document``).
"""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, FastAPI, Query, Response, UploadFile
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Scope

from server.auth import Reader
from server.deps import EmbedderDep, GalleryDep, MetricsDep, SettingsDep
from server.errors import error_responses
from server.forms import MAX_FILTER_VALUES, Timestamp, ValueList
from server.routes import search as multipart
from server.settings import MAX_TOP_K

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
PATH = "/v1/search"
LISTS = f"repeat it (cameras=1&cameras=2) or separate values with commas (cameras=1,2); at most {MAX_FILTER_VALUES}"


def _image_body(scope: Scope) -> bool:
    media_type = Headers(scope=scope).get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type.startswith("image/")


class RawImageRoute(APIRoute):
    """Matches only a request whose body is an image (any ``image/*``: one the decoder does not read gets its
    415); every other request is left to the routes after it."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not _image_body(scope):
            return Match.NONE, {}
        return super().matches(scope)


router = APIRouter(route_class=RawImageRoute)
# the multipart operation's answer, whatever it grows to hold
SearchAnswer = next(r.response_model for r in multipart.router.routes if isinstance(r, APIRoute) and r.path == PATH)
ImageBody = Annotated[
    bytes,
    Body(
        description="the query crop as the whole body; JPEG, PNG or WEBP (recognised by content)",
        media_type=IMAGE_TYPES[0],
    ),
]


Cameras = Annotated[ValueList, Query(description=f"only hits from these cameras: {LISTS}")]
ExcludeCameras = Annotated[ValueList, Query(description=f"no hits from these cameras: {LISTS}")]
PersonIds = Annotated[ValueList, Query(description=f"only hits of these people: {LISTS}")]


@router.post(
    PATH,
    response_model=SearchAnswer,
    responses=error_responses(*multipart.UPLOAD_ERRORS),
    include_in_schema=False,  # documented as a second request body of the multipart operation (document)
)
async def search_raw_body(
    role: Reader,
    settings: SettingsDep,
    model: EmbedderDep,
    gallery: GalleryDep,
    metrics: MetricsDep,
    response: Response,
    image: ImageBody = b"",  # an empty body is an image the decoder refuses (400), not a missing field
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="hits to return")] = 10,
    cameras: Cameras = None,
    exclude_cameras: ExcludeCameras = None,
    person_ids: PersonIds = None,
    time_from: Annotated[Timestamp | None, Query(description="hits captured at or after this time")] = None,
    time_to: Annotated[Timestamp | None, Query(description="hits captured at or before this time")] = None,
    query_camera: Annotated[
        str | None, Query(description="the query's camera: its matches are dropped (the Market-1501 protocol)")
    ] = None,
    group_by: Annotated[
        Literal["track"] | None, Query(description="track: also answer the tracks among the hits, best first")
    ] = None,
) -> Any:
    """Find the gallery identities closest to a person crop sent as the request body."""
    upload = UploadFile(_InMemory(image), size=len(image))
    answer = await multipart.search(
        role,
        settings=settings,
        model=model,
        gallery=gallery,
        metrics=metrics,
        response=response,
        image=[upload],
        top_k=top_k,
        cameras=cameras,
        exclude_cameras=exclude_cameras,
        person_ids=person_ids,
        time_from=time_from,
        time_to=time_to,
        query_camera=query_camera,
        group_by=group_by,
    )
    # The answer is the handler's own, already validated: serialised once here instead of validated again by
    # FastAPI against the response model; the headers the handler set (Server-Timing) go with it.
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


class _InMemory(io.BytesIO):
    """The body as UploadFile's file: Starlette reads a file without ``_rolled = False`` on a worker thread."""

    _rolled = False


def document(app: FastAPI) -> None:
    """Show the raw-body form in the app's OpenAPI schema: its image media types beside the multipart form in the
    search operation's request body, and its query parameters (which the multipart form does not read)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        raw_route = next(r for r in router.routes if isinstance(r, APIRoute))
        shown = APIRoute(raw_route.path, raw_route.endpoint, methods=["POST"], response_model=SearchAnswer)
        raw = get_openapi(title=app.title, version=app.version, routes=[shown])["paths"][PATH]["post"]
        operation = schema["paths"][PATH]["post"]
        binary = raw["requestBody"]["content"][IMAGE_TYPES[0]]
        operation["requestBody"]["content"].update(dict.fromkeys(IMAGE_TYPES, binary))
        operation["requestBody"]["description"] = (
            "the crop as a multipart form (field image, parameters as form fields), or as the whole body with "
            "Content-Type image/jpeg, image/png or image/webp and the parameters in the query string"
        )
        operation["parameters"] = [
            {**p, "description": f"{p.get('description', '')} (image-body form only)"}
            for p in raw.get("parameters", [])
            if p["in"] == "query"
        ] + [p for p in operation.get("parameters", []) if p["in"] != "query"]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
