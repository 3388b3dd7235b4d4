# ruff: noqa: N818 (the names mirror HTTP statuses, as httpx and requests users expect)
"""Exceptions mirroring the API's error schema ``{"error": {"code", "message"}, "request_id"}``, one per status."""

from __future__ import annotations

import httpx


class ReIDError(Exception):
    """Any failed call. ``status`` is the HTTP status (None when the server could not be reached)."""

    status: int | None = None

    def __init__(self, message: str, *, code: str = "error", request_id: str = "", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status or 'no response'} {self.code}: {self.message}{where}"


class ConnectionFailed(ReIDError):
    """The server could not be reached, or the connection broke."""


class BadRequest(ReIDError):
    status = 400


class Unauthorized(ReIDError):
    status = 401


class Forbidden(ReIDError):
    status = 403


class NotFound(ReIDError):
    status = 404


class PayloadTooLarge(ReIDError):
    status = 413


class UnsupportedMediaType(ReIDError):
    status = 415


class Unprocessable(ReIDError):
    status = 422


class ServerError(ReIDError):
    status = 500


class BadGateway(ReIDError):
    status = 502


class Unavailable(ReIDError):
    """Overloaded, not ready, or the embedding backend is down; ``retry_after`` seconds when the server says."""

    status = 503
    retry_after: float | None = None


class GatewayTimeout(ReIDError):
    status = 504


_BY_STATUS = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        ServerError,
        BadGateway,
        Unavailable,
        GatewayTimeout,
    )
}


def error_from_response(response: httpx.Response) -> ReIDError:
    """The exception for a non-2xx response; tolerates bodies that are not in the schema (a proxy's page)."""
    code, message, request_id = "error", response.reason_phrase or "error", response.headers.get("x-request-id", "")
    try:
        body = response.json()
        code = body["error"]["code"]
        message = body["error"]["message"]
        request_id = body.get("request_id", request_id)
    except (ValueError, KeyError, TypeError):
        if response.text:
            message = response.text[:200]
    cls = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else ReIDError)
    error = cls(message, code=code, request_id=request_id, status=response.status_code)
    if isinstance(error, Unavailable):
        retry = response.headers.get("retry-after")
        error.retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    return error
