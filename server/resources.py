"""The app's resources: created and closed in the lifespan (``Resources``), retried while the backend is down, the
readiness that follows from them, and the two that routes declare (server.deps): ``ServedEmbedder`` (decode to the
model's input, embed within the deadline, counted) and ``ServedGallery`` (the gallery with its threads and crops).

CPU work never runs on the event loop: decoding goes to the threadpool, gallery calls to gallery threads. Reads
(``ServedGallery.read``: search, get, stats) run on a pool of ``gallery_search_workers`` threads, many at once;
writes (``ServedGallery.write``: add, remove, close) on one writer thread, so a burst of adds occupies one thread
and never the searches' pool. Which pool a call takes is the caller's choice of method, never a lookup. Both gallery
backends allow that: the embedded store's searches share its index lock and never take its write mutex (SQLite
readers are per thread), and Milvus is a server. The gallery is whichever backend REID_GALLERY_URI names
(index.open_gallery); the routes cannot tell which.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from embedders.base import (
    Embedder,
    EmbedderDeadline,
    EmbedderError,
    EmbedderUnavailable,
    create_embedder,
)
from formats.images import decode_image, resize
from formats.spec import ModelSpec
from index import Gallery, open_gallery
from index.crops import CropStore
from index.errors import GalleryError, GalleryUnavailable, MissingLog, ModelMismatch
from index.records import Hit, SearchFilter
from server.metrics import Metrics
from server.model_variant import INLINE_SEARCH_FLOATS, gallery_refusal, searches_inline
from server.settings import Settings
from server.startup import check_startup

log = logging.getLogger("server")
T = TypeVar("T")
INLINE_DECODE_PIXELS = 256 * 512  # query images up to this size are decoded on the event loop (ServedEmbedder.decode)
START_RETRY_S = 2.0  # how often a server whose backend was down at start tries again


class Resources:
    """What the lifespan creates: the embedder, the gallery, and the readiness that follows from them.

    When the backend is unreachable at start, the server still starts (live, not ready) and keeps retrying in
    the background; a gallery built with another model keeps it not ready for good (never mixes embeddings).
    """

    def __init__(self, settings: Settings, metrics: Metrics, embedder: Embedder | None = None):
        self.settings = settings
        self.metrics = metrics
        self.embedder = embedder
        self.gallery: Gallery | None = None
        self.served_embedder: ServedEmbedder | None = None  # what routes get, once the gallery is open
        self.served_gallery: ServedGallery | None = None
        self.not_ready_reason = "starting"
        self._retry_task: asyncio.Task | None = None
        self._gallery_thread: ThreadPoolExecutor | None = None  # writes, opening and closing: one at a time
        self._gallery_readers: ThreadPoolExecutor | None = None

    @property
    def spec(self) -> ModelSpec:
        assert self.embedder is not None
        return self.embedder.spec

    async def start(self) -> None:
        s = self.settings
        check_startup(s, own_embedder=self.embedder is not None)  # StartupRefused: a path that is surely wrong
        self._gallery_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gallery-writer")
        self._gallery_readers = ThreadPoolExecutor(max_workers=s.gallery_search_workers, thread_name_prefix="gallery")
        if self.embedder is None:
            assert s.backend is not None  # Settings picks one when validated
            self.embedder = create_embedder(
                s.backend,
                artifact=s.artifact,
                triton_url=s.triton_url,
                model_name=s.model_name,
                protocol=s.triton_protocol,
                variant=s.model_variant,
            )
        try:
            await self._start_once()
        except EmbedderUnavailable as exc:
            log.warning("embedder unavailable at start (%s); retrying every %.0f s", exc, START_RETRY_S)
            self.not_ready_reason = f"the embedding backend is not reachable yet ({self._backend_name()})"
            self._retry_task = asyncio.create_task(self._retry_start())

    def _backend_name(self) -> str:
        s = self.settings
        if s.backend == "triton":
            return f"Triton at {s.triton_url}, model {s.triton_model_name}"
        return f"ONNX Runtime on {s.artifact / 'model.onnx' if s.artifact else 'the given embedder'}"

    async def _start_once(self) -> None:
        assert self.embedder is not None  # start() made one
        await self.embedder.start()
        if not await self._open_gallery():
            self._retry_task = asyncio.create_task(self._retry_gallery())

    async def _retry_gallery(self) -> None:
        while not await self._open_gallery():
            await asyncio.sleep(START_RETRY_S)

    async def _open_gallery(self) -> bool:
        """Open the gallery and start serving; False when its backend is not reachable yet (try again later)."""
        assert self.embedder is not None  # started
        spec = self.spec
        s = self.settings
        try:
            self.gallery = await self._on_writer(
                open_gallery,
                s.gallery_location,
                model_id=spec.model_id,
                dim=spec.dim,
                factory=s.index_factory,
                threads=s.search_threads,
                allow_missing_log=s.gallery_allow_missing_log,
                timeout=s.gallery_timeout_s,
            )
        except ModelMismatch as exc:
            log.error("gallery refused: %s", exc)
            self.not_ready_reason = (
                f"the gallery was built with another model than {spec.model_id}; re-index it with this model"
            )
            return True
        except MissingLog as exc:  # its message names files, not paths, and says what the operator can do
            log.error("gallery refused: %s", exc)
            self.not_ready_reason = f"{exc} (REID_GALLERY_ALLOW_MISSING_LOG=true)"
            return True
        except GalleryUnavailable as exc:  # a Milvus that is still starting, or briefly gone: retried
            log.warning("gallery unreachable at start (%s); retrying every %.0f s", exc, START_RETRY_S)
            self.not_ready_reason = "the gallery's backend is not reachable yet; retrying"
            return False
        except GalleryError as exc:
            log.error("gallery could not be opened: %s", exc)
            self.not_ready_reason = f"the gallery could not be opened ({type(exc).__name__})"
            return True
        if refusal := gallery_refusal(spec, self.embedder.variant, self.gallery):
            log.error("gallery refused: %s", refusal)
            self.not_ready_reason = refusal
            await self._on_writer(self.gallery.close)
            self.gallery = None
            return True
        await self._warm_readers()
        assert self._gallery_readers is not None and self._gallery_thread is not None  # made in start()
        if searches_inline(self.gallery, math.inf):  # small searches run on this thread: its reader made now too
            self.gallery.get(1)
        self.metrics.gallery_size.set(len(self.gallery))
        self.metrics.model_info.labels(spec.model_id, self.embedder.variant, s.backend).set(1)
        self.served_embedder = ServedEmbedder(self.embedder, s, self.metrics)
        self.served_gallery = ServedGallery(
            self.gallery, self._gallery_readers, self._gallery_thread, s.crops_root, s.crops_max_bytes, self.metrics
        )
        self.not_ready_reason = ""
        log.info("serving model %s (%s) with a gallery of %d", spec.model_id, self.embedder.variant, len(self.gallery))
        return True

    async def _warm_readers(self) -> None:
        """Start every search thread and let each make its per-thread state (the embedded store's SQLite reader)
        now, so the first searches do not pay for it and the server's open files stay level from here on."""
        workers = self.settings.gallery_search_workers
        barrier = threading.Barrier(workers)
        gallery = self.gallery
        assert gallery is not None  # warmed once opened

        def warm() -> None:
            try:
                barrier.wait(timeout=10)  # one task per thread: the pool starts a thread while none is idle
            except threading.BrokenBarrierError:
                pass
            gallery.get(1)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._gallery_readers, warm) for _ in range(workers)))

    async def _retry_start(self) -> None:
        while True:
            await asyncio.sleep(START_RETRY_S)
            try:
                await self._start_once()
                return
            except EmbedderUnavailable:
                continue
            except EmbedderError as exc:  # reachable now, but serving something this server cannot use
                log.error("embedder refused: %s", exc)
                self.not_ready_reason = "the embedding backend does not serve a usable model; see the server log"
                return

    async def close(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
        if self.embedder is not None:
            await self.embedder.close()
        if self.gallery is not None:
            await self._on_writer(self.gallery.close)
        if self._gallery_thread is not None:
            self._gallery_thread.shutdown(wait=True)
        if self._gallery_readers is not None:
            self._gallery_readers.shutdown(wait=True)

    async def readiness(self) -> str:
        """ "" when ready, else why not."""
        if self.gallery is None:
            return self.not_ready_reason or "not started"
        assert self.embedder is not None  # made in start(), before the gallery opens
        if not await self.embedder.ready():
            return "the embedding backend is not ready"
        return ""

    async def _on_writer(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Opening and closing the gallery: on the writer thread, as every write."""
        return await asyncio.get_running_loop().run_in_executor(
            self._gallery_thread, functools.partial(fn, *args, **kwargs)
        )


async def in_threadpool(fn: Callable[[], T]) -> T:
    """The request path's CPU work (decoding) off the event loop: Starlette's threadpool."""
    return await run_in_threadpool(fn)


class ServedEmbedder(Embedder):
    """The embedder as routes use it: images decoded to the model's input within the settings' limits, and
    embeddings within the request deadline (``EmbedderDeadline`` past it), counted in the metrics. Each step
    raises an error the handlers turn into the right status."""

    def __init__(self, embedder: Embedder, settings: Settings, metrics: Metrics):
        self.inner = embedder
        self.settings = settings
        self.metrics = metrics

    @property
    def spec(self) -> ModelSpec:  # type: ignore[override]  # the started embedder's, never a copy
        return self.inner.spec

    @property
    def variant(self) -> str:  # type: ignore[override]
        return self.inner.variant

    async def start(self) -> None:
        await self.inner.start()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()

    async def _embed(self, images: np.ndarray) -> np.ndarray:
        self.metrics.embed_batch.observe(len(images))
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.embed_deadline_s):  # in this task: wait_for would add one
                xq = await self.inner.embed(images)
        except TimeoutError:
            raise EmbedderDeadline(f"the embedder did not answer within {self.settings.embed_deadline_s:g} s") from None
        self.metrics.embed_latency.observe(time.perf_counter() - start)
        return xq  # checked against the spec by the embedder

    async def decode(self, data: bytes, *, inline: bool = False) -> np.ndarray:
        """Bytes -> the model's (H, W, 3) uint8 input, through the same decoder as every write.

        ``inline`` (one query image): a person-sized crop decodes and resizes in well under a millisecond, less
        than a hop to a worker thread and back (0.5 ms median, several ms at p90 on a busy 2-core host), so it is
        decoded on the event loop; a larger image (judged by its header, not its byte count: a small PNG can hold
        many pixels) still goes to the threadpool, so that no upload holds up the loop."""
        spec, limits = self.spec, self.settings.image_limits

        def work() -> np.ndarray:
            return resize(decode_image(data, limits), spec.input.height, spec.input.width)

        if inline and _header_pixels(data) <= INLINE_DECODE_PIXELS:
            return work()
        return await in_threadpool(work)


class ServedGallery:
    """The gallery as routes use it: ``read`` runs a call on the search pool (many at once, beside a write),
    ``write`` on the one writer thread; the crop store of REID_KEEP_CROPS, opened on first use."""

    def __init__(
        self,
        gallery: Gallery,
        readers: Executor,
        writer: Executor,
        crops_root: Path | None,
        crops_max_bytes: int,
        metrics: Metrics,
    ):
        self.gallery = gallery
        self._readers = readers
        self._writer = writer
        self._crops_root = crops_root
        self._crops_max_bytes = crops_max_bytes
        self._crops: CropStore | None = None
        self.metrics = metrics

    async def read(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """A call that only reads the gallery (search, get, records, find_hashes, stats, scan, calibration)."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    async def search(self, xq: np.ndarray, k: int, filters: SearchFilter | None, *, model_id: str) -> list[list[Hit]]:
        """Gallery.search; on the event loop when the gallery is an exact index small enough that the search costs
        less than the hop to a search thread (server.model_variant.searches_inline), else on the search pool."""
        if searches_inline(self.gallery, INLINE_SEARCH_FLOATS):
            return self.gallery.search(xq, k, filters, model_id=model_id)
        return await self.read(self.gallery.search, xq, k, filters, model_id=model_id)

    async def write(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """A call that changes the gallery (add_new, remove) or keeps crops: one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    def count_items(self) -> None:
        self.metrics.gallery_size.set(len(self.gallery))

    async def crop_store(self, *, create: bool) -> CropStore | None:
        """The kept crops; None when there is no crops folder (and ``create`` is false) or no place for one."""
        if self._crops is not None:
            return self._crops
        root = self._crops_root
        if root is None or (not create and not root.is_dir()):
            return None
        store = await run_in_threadpool(CropStore.open, root, self._crops_max_bytes)  # counts the kept bytes
        if self._crops is None:
            self._crops = store
        return self._crops


def _header_pixels(data: bytes) -> float:
    """Width x height from the image header (Pillow reads no pixels); infinity when the header is unreadable,
    which sends the bytes to the threadpool path, where decode_image raises the typed error."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width * im.height
    except Exception:
        return math.inf
