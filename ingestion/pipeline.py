"""The one write pipeline: encoded images with their records -> the gallery, with one result per item.

Every write into a gallery goes through ``WritePipeline``: the HTTP add route, folder and manifest indexing
(ingestion.bulk), the Ray path (ingestion.ray_bulk, whose actors are the embedder), re-embedding
(ingestion.reembed) and video ingestion (tracks' crops, JPEG-encoded by the caller). The steps, in order:

1. load: an item's bytes (given, or read by its loader in a thread; an ``OSError`` there is the item's error);
2. hash: the sha256 of the bytes is the record's ``content_hash``;
3. screen: an item whose bytes the gallery holds is a duplicate of that item (its crop is still kept where it is
   missing); of several items of one batch with the same bytes the first goes on and the others share its fate;
4. decode: formats.images (the typed ``ImageError``s) within ``limits`` (default ``ImageLimits()``), resized to
   the embedder's input;
5. embed: the decoded items through the ``Embedder``, in slices of the spec's ``max_batch_size`` sent together;
6. keep crops: with a ``CropStore``, every item's bytes before its add, so an item never exists without its crop
   (``CropStoreFull`` is raised with none of the batch added);
7. store: ``Gallery.add_new``, the one place that decides, under the gallery's write lock, whether bytes are new
   (or ``Gallery.import_items`` under the records' own ids with ``keep_ids``, while the gallery accepts them).

One bad item never sinks the others: its result carries the error. With ``atomic`` (the HTTP route's contract)
the first bad item's error is raised instead, named after the item, before anything is embedded or stored.
Failures that are not an item's (the embedder down, the gallery refusing, the crop store full) are raised.

API::

    Item(name: str, data: bytes | Callable[[], bytes], record: Record = Record())
    Result(name, id: int | None, added: bool, error: ImageError | ItemError | None, content_hash: str | None)
        .ok  .duplicate  .reason    # reason: "code: message" of an error, else None
    ItemError(code: str, message: str)            # an item's failure that is not an image error ("unreadable")
    Runner = Callable[[Callable[[], T]], Awaitable[T]]   # runs a blocking call off the event loop

    pipeline = WritePipeline(gallery, embedder, *, crops=None, limits=None, atomic=False,
                             keep_ids=False, run_blocking=None, run_read=None, run_write=None)
    results = await pipeline.add(items)                          # one batch; one Result per item, in order
    async for results in pipeline.add_batches(items, batch_size=64):   # many; the next batch is loaded,
        ...                                                      # hashed and decoded while this one embeds

``name`` is how the item is reported (a relative path, "image 3", "cam2/track17/frame480"); ``record`` holds its
labels (person_id optional, camera_id, captured_at, track_id, source, metadata such as frame, box, score) and
``id`` with ``keep_ids``; its ``content_hash`` is set by the pipeline. ``run_blocking`` runs loads and decodes,
``run_read`` the gallery's reads and ``run_write`` its writes (default: ``asyncio.to_thread`` for each; the server
gives its own threads). The gallery and the embedder must serve the same model (``ModelMismatch`` otherwise).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TypeVar, cast

import numpy as np

from embedders.base import Embedder, batch_slices
from formats.images import ImageError, ImageLimits, decode_image, resize
from index.crops import CropStore
from index.errors import GalleryError, ModelMismatch
from index.protocol import Gallery
from index.records import Record

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], Awaitable[T]]


class ItemError(Exception):
    """An item's failure that is not an image error: its bytes could not be read ("unreadable")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Item:
    """One image to write: how it is reported, its encoded bytes (JPEG, PNG or WEBP) or a function that reads
    them (run in a thread; an OSError is the item's error), and the record stored with it."""

    name: str
    data: bytes | Callable[[], bytes]
    record: Record = field(default_factory=Record)


@dataclass(frozen=True)
class Result:
    """What became of one item: ``id`` is where its bytes are stored (for a duplicate, the item that holds them),
    ``added`` whether this write stored it; or ``error``, with ``id`` None."""

    name: str
    id: int | None = None
    added: bool = False
    error: ImageError | ItemError | None = None
    content_hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def duplicate(self) -> bool:
        return self.error is None and not self.added

    @property
    def reason(self) -> str | None:
        return None if self.error is None else f"{self.error.code}: {self.error.message}"


@dataclass
class _Batch:
    """One batch between its steps: bytes, hashes, who leads each hash, pixels or errors, ids."""

    items: Sequence[Item]
    data: list[bytes | None]
    hashes: list[str | None]
    errors: list[ImageError | ItemError | None]
    leader: list[int]  # the first item of the batch with the same bytes (itself for the first)
    known: dict[str, int] = field(default_factory=dict)  # hashes the gallery held at the screen
    pixels: dict[int, np.ndarray] = field(default_factory=dict)  # decoded leaders not held by the gallery


async def _ready(value: T) -> T:
    return value


async def _to_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def _hashed(data: bytes) -> tuple[bytes, str]:
    return data, hashlib.sha256(data).hexdigest()


def _load(read: Callable[[], bytes]) -> tuple[bytes, str] | ItemError:
    try:
        return _hashed(read())
    except OSError as exc:
        return ItemError("unreadable", str(exc) if isinstance(exc, PermissionError) else exc.strerror or str(exc))


class WritePipeline:
    """Items -> hash, screen, decode, embed, keep crops, add; see the module's docstring for the contract."""

    def __init__(
        self,
        gallery: Gallery,
        embedder: Embedder,
        *,
        crops: CropStore | None = None,
        limits: ImageLimits | None = None,
        atomic: bool = False,
        keep_ids: bool = False,
        run_blocking: Runner | None = None,
        run_read: Runner | None = None,
        run_write: Runner | None = None,
    ) -> None:
        spec = embedder.spec
        if gallery.model_id != spec.model_id or gallery.dim != spec.dim:
            raise ModelMismatch(
                f"the gallery holds {gallery.dim}-d embeddings of {gallery.model_id!r}; "
                f"the embedder serves {spec.dim}-d embeddings of {spec.model_id!r}"
            )
        self.gallery = gallery
        self.embedder = embedder
        self.crops = crops
        self.limits = limits or ImageLimits()
        self.atomic = atomic
        self.keep_ids = keep_ids
        self._run_blocking = run_blocking or _to_thread
        self._run_read = run_read or _to_thread
        self._run_write = run_write or _to_thread

    async def add(self, items: Sequence[Item]) -> list[Result]:
        """Write one batch; one Result per item, in the items' order."""
        return await self._store(await self._prepare(items))

    async def add_batches(self, items: Iterable[Item], *, batch_size: int = 64) -> AsyncIterator[list[Result]]:
        """Write items in batches of ``batch_size``, yielding each batch's results; the next batch is loaded,
        hashed, screened and decoded while this one is embedded and stored."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        source = iter(items)
        pending: asyncio.Future[_Batch] | None = None
        try:
            while chunk := list(islice(source, batch_size)):
                prepared = asyncio.ensure_future(self._prepare(chunk))
                if pending is not None:
                    yield await self._store(await pending)
                pending = prepared
            if pending is not None:
                yield await self._store(await pending)
                pending = None
        finally:
            if pending is not None and not pending.done():  # stopped early (an error, the caller): no stray work
                pending.cancel()
                await asyncio.wait([pending])

    # -- the steps ----------------------------------------------------------------------------------------------

    async def _prepare(self, items: Sequence[Item]) -> _Batch:
        """Load, hash, screen and decode (no model, no write)."""
        # Bytes in hand are hashed here (a crop hashes in microseconds); a loader reads and hashes in a thread.
        loaded = await asyncio.gather(
            *(
                self._run_blocking(functools.partial(_load, it.data)) if callable(it.data) else _ready(_hashed(it.data))
                for it in items
            )
        )
        data = [None if isinstance(d, ItemError) else d[0] for d in loaded]
        hashes = [None if isinstance(d, ItemError) else d[1] for d in loaded]
        errors: list = [d if isinstance(d, ItemError) else None for d in loaded]
        first_of: dict[str, int] = {}
        leader = [i if h is None else first_of.setdefault(h, i) for i, h in enumerate(hashes)]
        batch = _Batch(items, data, hashes, errors, leader)
        if first_of:
            batch.known = await self._run_read(lambda: self.gallery.find_hashes(list(first_of)))
        todo = [i for h, i in first_of.items() if h not in batch.known]
        decoded = await asyncio.gather(*(self._run_blocking(functools.partial(self._decode, data[i])) for i in todo))
        for i, pixels in zip(todo, decoded, strict=True):
            if isinstance(pixels, ImageError):
                errors[i] = pixels
            else:
                batch.pixels[i] = pixels
        for i, lead in enumerate(leader):
            if errors[i] is None and errors[lead] is not None:
                errors[i] = errors[lead]  # the same bytes fail the same way
        if self.atomic and (bad := next((i for i, e in enumerate(errors) if e is not None), None)) is not None:
            err = errors[bad]
            if isinstance(err, ImageError):
                raise err.with_prefix(f"{items[bad].name}: ")
            raise ItemError(err.code, f"{items[bad].name}: {err.message}")
        return batch

    def _decode(self, data: bytes | None) -> np.ndarray | ImageError:
        spec = self.embedder.spec
        try:
            return resize(decode_image(data or b"", self.limits), spec.input.height, spec.input.width)
        except ImageError as exc:
            return exc

    async def _embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        spec = self.embedder.spec
        if not pixels:
            return np.zeros((0, spec.dim), np.float32)
        batch = np.stack(pixels)
        # Slices go out together: a backend with several workers (Triton instances, Ray actors) takes them at once.
        slices = batch_slices(len(batch), spec.max_batch_size)
        return np.concatenate(await asyncio.gather(*(self.embedder.embed(batch[s]) for s in slices)))

    async def _store(self, batch: _Batch) -> list[Result]:
        """Embed, keep crops, add; then every item's result."""
        order = sorted(batch.pixels)
        xb = await self._embed([batch.pixels[i] for i in order])
        if self.crops is not None:
            # The new items' crops before their add; items the gallery holds get theirs where it is missing.
            held = [i for i, h in enumerate(batch.hashes) if h in batch.known and batch.leader[i] == i]
            blobs = cast(list[bytes], [batch.data[i] for i in order + held])  # loaded items: bytes in hand
            if blobs:
                crops = self.crops
                await self._run_write(lambda: crops.put_many(blobs))
        stored = await self._write(batch, order, xb)
        results = []
        for i, item in enumerate(batch.items):
            h, lead = batch.hashes[i], batch.leader[i]
            if batch.errors[i] is not None:
                results.append(Result(item.name, error=batch.errors[i], content_hash=h))
            elif h in batch.known:
                results.append(Result(item.name, batch.known[h], content_hash=h))
            else:
                gid, added = stored[lead]
                results.append(Result(item.name, gid, added and lead == i, content_hash=h))
        return results

    async def _write(self, batch: _Batch, order: list[int], xb: np.ndarray) -> dict[int, tuple[int, bool]]:
        """Store the embedded items; item index -> (id, whether this call added it)."""
        if not order:
            return {}
        records = [replace(batch.items[i].record, content_hash=batch.hashes[i], id=None) for i in order]
        model_id = self.embedder.spec.model_id
        if self.keep_ids:
            ids = [cast(int, batch.items[i].record.id) for i in order]  # keep_ids: the records carry their ids
            try:
                await self._run_write(lambda: self.gallery.import_items(ids, xb, records, model_id=model_id))
                return {i: (gid, True) for i, gid in zip(order, ids, strict=True)}
            except (GalleryError, ValueError):
                self.keep_ids = False  # the gallery holds other items under these ids: new ids from here on
        stored = await self._run_write(lambda: self.gallery.add_new(xb, records, model_id=model_id))
        return dict(zip(order, stored, strict=True))
