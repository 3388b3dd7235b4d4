"""One error schema for every non-2xx answer, and the one table from exception types to HTTP status and code.

Every error body is ``{"error": {"code", "message"}, "request_id"}``: our own errors, FastAPI's 404/405/422,
the refusals of server/middleware.py and unhandled exceptions (a 500 that says nothing about paths or code).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from embedders.base import EmbedderBadResponse, EmbedderDeadline, EmbedderError, EmbedderUnavailable
from formats.images import ImageDecodeError, ImageFormatError, ImageLimitError
from index.errors import CorruptGallery, GalleryError, GalleryLocked, GalleryUnavailable, ModelMismatch

REQUEST_ID_HEADER = "X-Request-ID"

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameters",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "deadline_exceeded",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


class APIError(Exception):
    """An error the API answers with: HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries for the given statuses, all with the one error schema."""
    return {status: {"model": ErrorResponse, "description": HTTPStatus(status).phrase} for status in statuses}


def request_id_of(scope_or_request: Scope | Request) -> str:
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return scope.get("state", {}).get("request_id", "")


def error_response(
    request_id: str, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: request_id})


def _validation_message(exc: RequestValidationError) -> str:
    # Field locations and pydantic's messages only: never echo the input (it may be a whole image).
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # our validators' own words
        parts.append(f"{where or 'request'}: {message}")
    return "; ".join(parts) or "invalid request"


# Exception type -> (status, code, message for the client or None to use the exception's own, retryable).
# The embedder's, the decoder's and the gallery's messages are written for users (no URLs, no paths). Order
# matters: the first type an exception is an instance of wins, so subclasses come before their bases.
ERROR_MAP: list[tuple[type[Exception], int, str | None, str | None, bool]] = [
    (ImageDecodeError, 400, None, None, False),
    (ImageFormatError, 415, None, None, False),
    (ImageLimitError, 422, None, None, False),
    (EmbedderUnavailable, 503, "embedder_unavailable", None, True),
    (EmbedderDeadline, 504, "embedder_deadline", None, False),
    (EmbedderBadResponse, 502, "embedder_bad_response", None, False),
    (EmbedderError, 502, "embedder_error", None, False),
    (ModelMismatch, 503, "model_mismatch", None, True),
    (GalleryLocked, 503, "gallery_locked", "another process holds the gallery", True),
    (CorruptGallery, 503, "gallery_corrupt", "the gallery is corrupt", True),
    (GalleryUnavailable, 503, "gallery_unavailable", "the gallery's database is unavailable", True),
    (GalleryError, 500, "gallery_error", "the gallery failed", False),
]


def error_status(exc: Exception) -> tuple[int, str]:
    """The status and code ERROR_MAP gives an exception (an image's refusal, say); 500 for anything else."""
    for exc_type, status, code, _, _ in ERROR_MAP:
        if isinstance(exc, exc_type):
            return status, code or str(getattr(exc, "code", _CODES[status]))
    return 500, "internal_error"


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers in full on this request's path (asked per method: FastAPI's
    included routers do not expose their routes' methods)."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    retry = {"Retry-After": str(retry_after_s)}

    def mapped(status: int, code: str | None, message: str | None, retryable: bool):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return error_response(
                request_id_of(request),
                status,
                code or str(getattr(exc, "code", _CODES[status])),
                message or str(getattr(exc, "message", exc)),
                retry if retryable else None,
            )

        return handler

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request_id_of(request), exc.status, exc.code, exc.message, exc.headers)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        headers = exc.headers
        if status == 405:  # Starlette names only the first route of the path; a path may have several
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(request_id_of(request), status, _CODES.get(status, "error"), message, headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request_id_of(request), 422, "invalid_parameters", _validation_message(exc))

    # Starlette types a handler as taking any Exception; each of these is registered for its own type only.
    app.add_exception_handler(APIError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    for exc_type, status, code, message, retryable in ERROR_MAP:
        app.add_exception_handler(exc_type, mapped(status, code, message, retryable))
    # Anything else is a bug: UnhandledErrorMiddleware answers 500.
