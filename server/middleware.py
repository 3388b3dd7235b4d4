"""The ASGI middleware around the app: request ids, the last-resort 500, and refusals before any work
(body size, requests in flight). Each answers in the one error schema of server/errors.py."""

from __future__ import annotations

import logging
import re
import uuid

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response, request_id_of

log = logging.getLogger("server")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
