"""One error schema for every non-2xx answer, and the ways a request is refused before any work.

Every error body is ``{"error": {"code", "message"}, "request_id"}``: our own errors, FastAPI's 404/405/422,
the body-size 413, the in-flight 503 and unhandled exceptions (a 500 that says nothing about paths or code).
"""

from __future__ import annotations

import logging
import re
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from index.errors import CorruptGallery, GalleryError, GalleryLocked, ModelMismatch
from server.embedder import EmbedderBadResponse, EmbedderDeadline, EmbedderError, EmbedderUnavailable
from server.imaging import ImageError

log = logging.getLogger("server")

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

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
    request_id: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: request_id})


def _validation_message(exc: RequestValidationError) -> str:
    # Field locations and pydantic's messages only: never echo the input (it may be a whole image).
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    retry = {"Retry-After": str(retry_after_s)}

    def handle(status: int, code: str, message: str | None = None, headers: dict[str, str] | None = None):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return error_response(request_id_of(request), status, code, message or str(exc), headers)

        return handler

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request_id_of(request), exc.status, exc.code, exc.message, exc.headers)

    async def image_error(request: Request, exc: ImageError) -> JSONResponse:
        return error_response(request_id_of(request), exc.status, exc.code, exc.message)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        return error_response(request_id_of(request), status, _CODES.get(status, "error"), message, exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request_id_of(request), 422, "invalid_parameters", _validation_message(exc))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(ImageError, image_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    # The embedder's and the gallery's messages are written for users (no URLs, no paths).
    app.add_exception_handler(EmbedderUnavailable, handle(503, "embedder_unavailable", headers=retry))
    app.add_exception_handler(EmbedderDeadline, handle(504, "embedder_deadline"))
    app.add_exception_handler(EmbedderBadResponse, handle(502, "embedder_bad_response"))
    app.add_exception_handler(EmbedderError, handle(502, "embedder_error"))
    app.add_exception_handler(ModelMismatch, handle(503, "model_mismatch", headers=retry))
    app.add_exception_handler(GalleryLocked, handle(503, "gallery_locked", "another process holds the gallery", retry))
    app.add_exception_handler(CorruptGallery, handle(503, "gallery_corrupt", "the gallery is corrupt", retry))
    app.add_exception_handler(GalleryError, handle(500, "gallery_error", "the gallery failed"))
    # Anything else is a bug: UnhandledErrorMiddleware answers 500.


class RequestIdMiddleware:
    """Give each request an id (the client's X-Request-ID when it is sane), echoed in headers and error bodies."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class UnhandledErrorMiddleware:
    """Answer a 500 in the error schema (no message, path or traceback) for any exception that escapes the app.

    Hand-written instead of an ``Exception`` handler: Starlette re-raises after that handler answers, and
    uvicorn then closes the connection, which breaks the client's next request on the same keep-alive socket.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(request_id_of(scope), 500, "internal_error", "internal server error")
                await response(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for a body over ``max_bytes``: at once on the declared Content-Length, before reading anything, and
    as soon as the running count of a streamed (chunked) body passes the cap.

    Hand-written because FastAPI's max_body_size answers a declared oversize with plain text, outside our
    error schema. After a refusal the app sees a disconnect and anything it still sends is dropped.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self, scope: Scope) -> JSONResponse:
        return error_response(
            request_id_of(scope),
            413,
            "payload_too_large",
            f"the request body is over the limit of {self.max_bytes} bytes",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refusal(scope)(scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refusal(scope)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:  # the app failing on the cut-off body is expected; the client has its 413
                raise


class InFlightLimitMiddleware:
    """Bound the requests being worked on: one more than ``limit`` gets an immediate 503, not a queue.

    Hand-written because uvicorn's --limit-concurrency resets connections instead of answering, and the
    check must happen before the body is read. Probes (/healthz, /readyz, /metrics) are never refused.
    """

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int, exempt: tuple[str, ...] = ()):
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = error_response(
                request_id_of(scope),
                503,
                "overloaded",
                f"the server is at its limit of {self.limit} requests in flight; retry shortly",
                {"Retry-After": str(self.retry_after_s)},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1  # single event loop: no lock needed between the check and the increment
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
