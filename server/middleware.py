"""What stands between a client and the work: request ids, the last-resort 500, refusals before any work (body
size, body deadline), admission of requests whose body is in (the in-flight bound, a dependency), and the
connection guards uvicorn lacks (request-head deadline, connections per client address). Each refusal answers in
the one error schema of server/errors.py."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.errors import APIError, error_response, request_id_of

if TYPE_CHECKING:  # the mixins below extend uvicorn's protocol classes: typed as such, plain classes at run time
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    _GuardsBase = H11Protocol
    _HeadSizeBase = HttpToolsProtocol
else:
    _GuardsBase = _HeadSizeBase = object

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


class _Refuse(Exception):  # noqa: N818 (a signal between a guard's receive and _BodyGuard, never raised further)
    """Raised by a body guard's ``_receive`` to refuse the request."""


class _BodyGuard:
    """The shape both body guards share: once ``_receive`` refuses, the client gets ``_refusal`` (unless the app
    has begun answering), the app sees a disconnect, and whatever the app still sends, or raises on the cut-off
    body, is dropped."""

    def __init__(self, app: ASGIApp):
        self.app = app

    def _refusal(self, scope: Scope) -> JSONResponse:
        raise NotImplementedError

    def _early(self, scope: Scope) -> bool:
        """Whether to refuse from the head alone, before reading anything."""
        return False

    def _reader(self, receive: Receive) -> Receive:
        """This request's receive, raising _Refuse when the body breaks the guard's rule."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._early(scope):
            await self._refusal(scope)(scope, receive, send)
            return
        read = self._reader(receive)
        refused = False
        started = False

        async def guarded_receive():
            nonlocal refused
            if refused:
                return {"type": "http.disconnect"}
            try:
                return await read()
            except _Refuse:
                refused = True
                if not started:
                    await self._refusal(scope)(scope, receive, send)
                return {"type": "http.disconnect"}

        async def guarded_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not refused:  # the app failing on the cut-off body is expected; the client has its refusal
                raise


class BodySizeLimitMiddleware(_BodyGuard):
    """413 for a body over ``max_bytes``: at once on the declared Content-Length, before reading anything, and
    as soon as the running count of a streamed (chunked) body passes the cap.

    Hand-written because FastAPI's max_body_size answers a declared oversize with plain text, outside our
    error schema. After a refusal the app sees a disconnect and anything it still sends is dropped.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes

    def _refusal(self, scope: Scope) -> JSONResponse:
        return error_response(
            request_id_of(scope),
            413,
            "payload_too_large",
            f"the request body is over the limit of {self.max_bytes} bytes",
        )

    def _early(self, scope: Scope) -> bool:
        declared = _header(scope, b"content-length")
        return declared is not None and declared.isdigit() and int(declared) > self.max_bytes

    def _reader(self, receive: Receive) -> Receive:
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _Refuse
            return message

        return counting_receive


class BodyDeadlineMiddleware(_BodyGuard):
    """408 for a request whose body has not arrived in full within ``timeout_s`` of its head, and the connection
    closed (a client that stalled mid-body cannot send a next request on it anyway).

    The deadline covers the whole body, not the pause between two reads as nginx's client_body_timeout does, so a
    client that trickles a byte at a time cannot hold the connection for longer either. Hand-written: uvicorn has
    no body timeout. After the 408 the app sees a disconnect and anything it still sends is dropped.
    """

    def __init__(self, app: ASGIApp, timeout_s: float):
        super().__init__(app)
        self.timeout_s = timeout_s

    def _refusal(self, scope: Scope) -> JSONResponse:
        return error_response(
            request_id_of(scope),
            408,
            "request_timeout",
            f"the request body did not arrive within {self.timeout_s:g} s",
            {"Connection": "close"},
        )

    def _reader(self, receive: Receive) -> Receive:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_in = False

        async def deadline_receive():
            nonlocal body_in
            if body_in:  # after the body only a disconnect can come: no deadline on waiting for it
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Refuse from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_in = True
            return message

        return deadline_receive


class InFlightLimit:
    """Admission: bound the requests being worked on; one more than ``limit`` gets an immediate 503, not a queue.

    A FastAPI dependency of the whole app, not a middleware: FastAPI reads and parses the request body before it
    solves dependencies, so only a request whose body is in (and passed the size and deadline checks) takes a
    slot, and an upload in progress, however slow, never does. The slot is held until the endpoint returns
    (``Depends(..., scope="function")``). Hand-written because uvicorn's --limit-concurrency resets connections
    instead of answering, and FastAPI's ``max_concurrency`` queues. Probes (``exempt`` paths) are never refused.
    """

    def __init__(self, limit: int, retry_after_s: int, exempt: tuple[str, ...] = ()):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, request: Request) -> AsyncIterator[None]:
        if request.url.path in self.exempt:
            yield
            return
        if self.in_flight >= self.limit:
            raise APIError(
                503,
                "overloaded",
                f"the server is at its limit of {self.limit} requests in flight; retry shortly",
                {"Retry-After": str(self.retry_after_s)},
            )
        self.in_flight += 1  # single event loop: no lock needed between the check and the increment
        try:
            yield
        finally:
            self.in_flight -= 1


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        request_id_of(scope),
        429,
        "too_many_requests",
        "too many open connections from this address",
        {"Connection": "close"},
    )
    await response(scope, receive, send)


class ConnectionGuards(_GuardsBase):
    """The connection guards uvicorn lacks, for either of its HTTP protocol classes (h11 or httptools).

    * A deadline on each request head: ``header_timeout_s`` from connecting, or from the end of the previous
      answer, to a complete head; a connection that misses it is closed. (uvicorn arms its keep-alive timer only
      after a first answer and cancels it on any byte, so a client that connects and trickles a head is never
      timed out.) Once a head is in, the app's own deadlines (body, embedding) apply instead.
    * At most ``max_per_client`` open connections per peer address (0: no limit): the connection over it is
      answered 429 in the error schema, then closed. The peer is the TCP peer, so behind a proxy it is the proxy.
    * A request head over ``max_header_bytes`` is answered 400 and the connection closed: h11 does it with its
      incomplete-event limit (uvicorn_config sets it), httptools has no such limit and takes ``HeadSizeLimit``.

    The mixin overrides only the connection callbacks both protocol classes share (``cycle`` is the request being
    answered, None before the first head); settings reach it as class attributes because uvicorn builds one
    protocol object per connection from a class (``guarded_protocol`` makes that class).
    """

    header_timeout_s: float = 10.0
    max_per_client: int = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_per_client and self.client is not None:
            peer = self.client[0]
            same_peer = sum(1 for c in self.connections if (getattr(c, "client", None) or ("",))[0] == peer)
            if same_peer > self.max_per_client:
                log.warning("refusing a connection from %s: over %d open connections", peer, self.max_per_client)
                self.app = RequestIdMiddleware(_too_many_connections)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # a head is in: the app handles it
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class HeadSizeLimit(_HeadSizeBase):
    """For uvicorn's httptools protocol: a request head over ``max_header_bytes`` is answered 400 and the
    connection closed, as h11 does. Counts the bytes fed while a head is being parsed (between the parser's
    message-begin and headers-complete callbacks), so body bytes never count."""

    max_header_bytes: int = 16 * 1024

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                log.warning("refusing a request head of over %d bytes", self.max_header_bytes)
                self.send_400_response("Invalid HTTP request received.")


class GuardedH11Protocol(ConnectionGuards, H11Protocol):
    """uvicorn's h11 protocol with the connection guards."""


def _httptools_protocol() -> type | None:
    """uvicorn's httptools protocol class, or None where httptools is not installed (uvicorn[standard] has it)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    return HttpToolsProtocol


def guarded_protocol(
    header_timeout_s: float, max_per_client: int, max_header_bytes: int = 16 * 1024, *, parser: str = "auto"
) -> type[ConnectionGuards]:
    """The protocol class uvicorn.Config(http=...) takes, with these guards: on httptools, the faster parser
    (0.3-0.4 ms less per request here), when it is installed and ``parser`` is "auto" or "httptools"; else h11."""
    base = _httptools_protocol() if parser in ("auto", "httptools") else None
    if base is None and parser == "httptools":
        raise ValueError("the httptools parser is not installed (pip install httptools)")
    attrs = {
        "header_timeout_s": header_timeout_s,
        "max_per_client": max_per_client,
        "max_header_bytes": max_header_bytes,
    }
    if base is None:
        return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)
    return type("GuardedHttpToolsProtocol", (ConnectionGuards, HeadSizeLimit, base), attrs)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
