"""What pymilvus and gRPC raise, as the gallery's errors: one boundary around every public method of MilvusGallery.

A connection lost, a server unavailable, overloaded or timed out is GalleryUnavailable (the API answers 503 with
Retry-After); the collection gone while open (dropped) is MissingLog, never an empty answer; anything else Milvus
refuses is a GalleryError.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc
from pymilvus import MilvusException
from pymilvus.exceptions import CollectionNotExistException, ConnectError, ErrorCode, MilvusUnavailableException

from index.errors import GalleryError, GalleryUnavailable, MissingLog
from index.uri import GalleryURI

FAILURES = (MilvusException, grpc.RpcError, grpc.FutureTimeoutError, ConnectionError, TimeoutError)
# pymilvus' "could not connect" (Status.CONNECT_FAILED) and Milvus' "service unavailable" are both code 2.
UNAVAILABLE_CODES = frozenset({2, ErrorCode.RATE_LIMIT})
UNAVAILABLE_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


def gallery_error(exc: BaseException, target: GalleryURI) -> GalleryError:
    """The gallery's error for what the Milvus client raised (its message for logs: the API answers its own)."""
    if isinstance(exc, grpc.RpcError):  # a grpc.Call in practice; the bare base class has neither method
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        message = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    elif isinstance(exc, MilvusException):
        code, message = exc.code, exc.message
    else:
        code, message = None, str(exc) or type(exc).__name__
    if isinstance(exc, CollectionNotExistException) or code == ErrorCode.COLLECTION_NOT_FOUND:
        return MissingLog(
            f"collection {target.collection!r} is gone while the gallery was open (dropped?): refused rather than"
            " served empty; restore it, or reopen with allow_missing_log=True to start an empty gallery"
        )
    unavailable = (
        isinstance(exc, ConnectError | MilvusUnavailableException | grpc.FutureTimeoutError | ConnectionError)
        or isinstance(exc, TimeoutError)
        or (isinstance(exc, MilvusException) and exc.retriable and not exc.is_input_error)
        or code in UNAVAILABLE_GRPC
        or (isinstance(code, int) and code in UNAVAILABLE_CODES)
    )
    if unavailable:
        return GalleryUnavailable(f"Milvus at {target} is unavailable: {message}")
    return GalleryError(f"Milvus refused a request on {target}: {message}")


def milvus_boundary(method: Callable) -> Callable:
    """Raise the gallery's errors, never the client's: wraps each public method of MilvusGallery."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # self: a MilvusGallery (its .target)
        try:
            return method(self, *args, **kwargs)
        except FAILURES as exc:
            raise gallery_error(exc, self.target) from exc

    return wrapper


MIN_SERVER = (2, 5)  # nullable VARCHAR fields, an INVERTED index on VARCHAR and database properties


def check_server_version(client, target: GalleryURI, timeout: float | None) -> None:
    """Refuse a Milvus server older than MIN_SERVER by name: it would otherwise fail later, on the first call
    that needs a newer feature, with the server's bare UNIMPLEMENTED. Milvus Lite is always new enough."""
    if target.kind != "milvus":
        return
    try:
        text = client.get_server_version(timeout=timeout)
    except FAILURES as exc:
        raise gallery_error(exc, target) from exc
    try:
        version = tuple(int(p) for p in str(text).lstrip("v").split("-")[0].split(".")[:2])
    except ValueError:
        return  # a build that names itself otherwise: let the calls say what it lacks
    if version < MIN_SERVER:
        need = ".".join(map(str, MIN_SERVER))
        raise GalleryError(
            f"{target}: the Milvus server is {text}, older than {need}, which this backend needs (nullable fields,"
            f" an INVERTED index on VARCHAR, database properties); run Milvus {need} or newer"
        )
