"""``ReIDClient`` (sync) and ``AsyncReIDClient`` on httpx. Both build the same requests (``_Call``) and parse the
same answers; only the transport call differs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote

import httpx

from client.errors import ConnectionFailed, ReIDError, error_from_response
from client.models import AddResult, Embedding, GalleryItem, GalleryStats, Readiness, SearchResult
from client.track_models import IdentityPage, Timeline, TrackDetail, TrackPage

T = TypeVar("T")
ImageInput = str | os.PathLike | bytes | BinaryIO  # a file path, the encoded bytes, or an open binary file
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0


def _image_part(image: ImageInput, name: str = "image") -> tuple[str, bytes, str]:
    if isinstance(image, bytes):
        return (name, image, "application/octet-stream")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return (path.name, path.read_bytes(), "application/octet-stream")
    return (Path(getattr(image, "name", name)).name, image.read(), "application/octet-stream")


def _listed(value: Any) -> list | None:
    """A form field given once or per image -> a list of strings for httpx (None: leave the field out)."""
    if value is None:
        return None
    values = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    return [json.dumps(v) if isinstance(v, dict) else str(v) for v in values]


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    data: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    ok_statuses: tuple[int, ...] = ()  # non-2xx statuses that are an answer, not an error (readyz 503)
    params: dict[str, Any] | None = None  # the query string (GET)

    def kwargs(self) -> dict[str, Any]:
        data = {k: v for k, v in self.data.items() if v is not None}
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        return {"data": data or None, "files": self.files, **({"params": params} if params else {})}


def _json(parse: Callable[[dict], T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(response.json())


def _readiness(response: httpx.Response) -> Readiness:
    body = response.json()
    if response.status_code == 200:
        return Readiness(True, body.get("model_id"), body.get("backend"), body.get("gallery_size"))
    return Readiness(False, reason=body.get("error", {}).get("message", ""))


class _Calls:
    """The requests of every operation; the clients below send them."""

    @staticmethod
    def search(
        image: ImageInput,
        *,
        top_k: int = 10,
        cameras: Sequence[str] | None = None,
        exclude_cameras: Sequence[str] | None = None,
        person_ids: Sequence[str] | None = None,
        time_from: float | None = None,
        time_to: float | None = None,
        query_camera: str | None = None,
    ) -> _Call[SearchResult]:
        data = {
            "top_k": str(top_k),
            "cameras": _listed(cameras),
            "exclude_cameras": _listed(exclude_cameras),
            "person_ids": _listed(person_ids),
            "time_from": time_from,
            "time_to": time_to,
            "query_camera": query_camera,
        }
        return _Call("POST", "/v1/search", _json(SearchResult.from_json), data, [("image", _image_part(image))])

    @staticmethod
    def embed(image: ImageInput) -> _Call[Embedding]:
        return _Call("POST", "/v1/embed", _json(Embedding.from_json), files=[("image", _image_part(image))])

    @staticmethod
    def add(
        images: ImageInput | Sequence[ImageInput],
        person_id: str | Sequence[str],
        *,
        camera_id: str | Sequence[str] | None = None,
        captured_at: float | Sequence[float] | None = None,
        track_id: str | Sequence[str] | None = None,
        metadata: dict | Sequence[dict] | None = None,
    ) -> _Call[AddResult]:
        many = images if isinstance(images, list | tuple) else [images]
        data = {
            "person_id": _listed(person_id),
            "camera_id": _listed(camera_id),
            "captured_at": _listed(captured_at),
            "track_id": _listed(track_id),
            "metadata": _listed(metadata),
        }
        files = [("images", _image_part(image, f"image{i}")) for i, image in enumerate(many)]
        return _Call("POST", "/v1/gallery", _json(AddResult.from_json), data, files)

    @staticmethod
    def get(item_id: int) -> _Call[GalleryItem]:
        return _Call("GET", f"/v1/gallery/{int(item_id)}", _json(GalleryItem.from_json))

    @staticmethod
    def delete(item_id: int) -> _Call[bool]:
        return _Call("DELETE", f"/v1/gallery/{int(item_id)}", lambda r: bool(r.json()["deleted"]))

    @staticmethod
    def stats() -> _Call[GalleryStats]:
        return _Call("GET", "/v1/gallery", _json(GalleryStats.from_json))

    @staticmethod
    def tracks(**filters: Any) -> _Call[TrackPage]:
        return _Call("GET", "/v1/tracks", _json(TrackPage.from_json), params=filters)

    @staticmethod
    def track(track_id: str) -> _Call[TrackDetail]:
        return _Call("GET", f"/v1/tracks/{quote(str(track_id), safe='')}", _json(TrackDetail.from_json))

    @staticmethod
    def identities(**filters: Any) -> _Call[IdentityPage]:
        return _Call("GET", "/v1/identities", _json(IdentityPage.from_json), params=filters)

    @staticmethod
    def identity(identity_id: int) -> _Call[Timeline]:
        return _Call("GET", f"/v1/identities/{int(identity_id)}", _json(Timeline.from_json))

    @staticmethod
    def health() -> _Call[bool]:
        return _Call("GET", "/healthz", lambda r: r.json().get("status") == "ok")

    @staticmethod
    def ready() -> _Call[Readiness]:
        return _Call("GET", "/readyz", _readiness, ok_statuses=(503,))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _finish(call: _Call[T], response: httpx.Response) -> T:
    if response.is_success or response.status_code in call.ok_statuses:
        try:
            return call.parse(response)
        except (ValueError, KeyError, TypeError) as exc:
            raise ReIDError(f"unexpected response body ({exc})", status=response.status_code) from None
    raise error_from_response(response)


class ReIDClient:
    """Blocking client: ``with ReIDClient(url, api_key=...) as c: c.search("crop.jpg", top_k=5)``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        self._http = httpx.Client(base_url=url, headers=_headers(api_key), timeout=timeout, transport=transport)

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **call.kwargs())
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}", code="connection_failed") from exc
        return _finish(call, response)

    def search(self, image: ImageInput, **options: Any) -> SearchResult:
        """Identities and hits for a person crop; options: top_k, cameras, exclude_cameras, person_ids,
        time_from, time_to, query_camera."""
        return self._send(_Calls.search(image, **options))

    def embed(self, image: ImageInput) -> Embedding:
        return self._send(_Calls.embed(image))

    def add(
        self, images: ImageInput | Sequence[ImageInput], person_id: str | Sequence[str], **fields: Any
    ) -> AddResult:
        """Add one or many crops; fields (once for all, or one per image): camera_id, captured_at, track_id, metadata."""
        return self._send(_Calls.add(images, person_id, **fields))

    def get(self, item_id: int) -> GalleryItem:
        return self._send(_Calls.get(item_id))

    def delete(self, item_id: int) -> bool:
        return self._send(_Calls.delete(item_id))

    def stats(self) -> GalleryStats:
        return self._send(_Calls.stats())

    def tracks(self, **filters: Any) -> TrackPage:
        """One page of tracks; filters: camera_id, time_from, time_to, limit, cursor (a page's next_cursor)."""
        return self._send(_Calls.tracks(**filters))

    def track(self, track_id: str) -> TrackDetail:
        return self._send(_Calls.track(track_id))

    def identities(self, **filters: Any) -> IdentityPage:
        """One page of identities; filters: camera_id, time_from, time_to, limit, cursor."""
        return self._send(_Calls.identities(**filters))

    def identity(self, identity_id: int) -> Timeline:
        """A person's timeline: their tracks in time order."""
        return self._send(_Calls.identity(identity_id))

    def health(self) -> bool:
        return self._send(_Calls.health())

    def ready(self) -> Readiness:
        return self._send(_Calls.ready())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReIDClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncReIDClient:
    """The same calls for asyncio: ``async with AsyncReIDClient(url) as c: await c.search(b"...")``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ):
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100),
        )

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, **call.kwargs())
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}", code="connection_failed") from exc
        return _finish(call, response)

    async def search(self, image: ImageInput, **options: Any) -> SearchResult:
        return await self._send(_Calls.search(image, **options))

    async def embed(self, image: ImageInput) -> Embedding:
        return await self._send(_Calls.embed(image))

    async def add(
        self, images: ImageInput | Sequence[ImageInput], person_id: str | Sequence[str], **fields: Any
    ) -> AddResult:
        return await self._send(_Calls.add(images, person_id, **fields))

    async def get(self, item_id: int) -> GalleryItem:
        return await self._send(_Calls.get(item_id))

    async def delete(self, item_id: int) -> bool:
        return await self._send(_Calls.delete(item_id))

    async def stats(self) -> GalleryStats:
        return await self._send(_Calls.stats())

    async def tracks(self, **filters: Any) -> TrackPage:
        return await self._send(_Calls.tracks(**filters))

    async def track(self, track_id: str) -> TrackDetail:
        return await self._send(_Calls.track(track_id))

    async def identities(self, **filters: Any) -> IdentityPage:
        return await self._send(_Calls.identities(**filters))

    async def identity(self, identity_id: int) -> Timeline:
        return await self._send(_Calls.identity(identity_id))

    async def health(self) -> bool:
        return await self._send(_Calls.health())

    async def ready(self) -> Readiness:
        return await self._send(_Calls.ready())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncReIDClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
