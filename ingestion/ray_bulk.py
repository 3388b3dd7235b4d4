"""Bulk indexing with the embedding on Ray: ingestion.bulk's files, labels, skips, de-duplication and summary, the
same write pipeline (ingestion.pipeline), with the model run by a pool of Ray actors.

    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --ray              # a local Ray in this process
    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --ray auto         # the cluster this node is in
    python -m ingestion.bulk FOLDER --gallery DIR --backend triton --triton-url triton:8001 --ray ray://head:10001

``RayEmbedder`` is an ``Embedder`` whose batches go to actors, each holding one started embedder (ONNX Runtime
in-process, or a Triton client) for its life. The driver runs the write pipeline as the threaded path does: it
reads, hashes, screens and decodes the files in threads (a file the gallery holds is never decoded or embedded,
so a rerun costs reads and hashes), sends the decoded batches to the actors, keeps the crops of the bytes it read
and adds with ``Gallery.add_new``: a gallery folder takes a single writer, so the driver is that writer for every
backend. Only the driver reads FOLDER; every node needs apnet-reid with the ``server`` and ``cluster`` extras (the
API image has them) and, for the onnx backend, the artifact at the same path as the driver.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import ray

from embedders.base import Embedder, batch_slices, create_embedder
from formats.spec import ModelSpec
from index import Gallery
from index.crops import CropStore
from ingestion.bulk import Item, Layout, Summary, find_items, index_items

LOCAL = "local"  # ray.init's address for a fresh local Ray, whatever RAY_ADDRESS says


@contextmanager
def ray_session(address: str = LOCAL) -> Iterator[None]:
    """Ray for the length of the block: a fresh local instance (address "local"), or a connection to a running
    cluster ("auto", HOST:PORT, ray://HOST:10001). A Ray the caller already started is used and left running."""
    if ray.is_initialized():
        yield
        return
    ray.init(
        address=address,
        include_dashboard=False if address == LOCAL else None,
        log_to_driver=False,  # worker logs stay in Ray's session folder; failures come back as exceptions
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


class _EmbedActor:
    """One per actor: an embedder started for the actor's life, with its own event loop (embedders are async)."""

    def __init__(self, settings: dict) -> None:
        self.loop = asyncio.new_event_loop()
        self.embedder = create_embedder(**settings)
        self.loop.run_until_complete(self.embedder.start())

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.loop.run_until_complete(self.embedder.embed(images))

    def __del__(self) -> None:
        with suppress(Exception):  # the actor is going away; there is no one left to report to
            self.loop.run_until_complete(self.embedder.close())
            self.loop.close()


class RayEmbedder(Embedder):
    """An Embedder over ``actors`` Ray actors (one CPU each), each running ``create_embedder(**settings)``; a call's
    images go out in slices of ``batch_size``, each to the next idle actor. ``spec`` is what the settings serve."""

    def __init__(self, spec: ModelSpec, settings: dict, *, actors: int, batch_size: int = 64) -> None:
        self.spec = spec
        self.settings = _for_actors(settings)
        self.n_actors = actors
        self.batch_size = batch_size
        self._idle: asyncio.Queue | None = None
        self._actors: list = []

    async def start(self) -> None:
        remote = ray.remote(num_cpus=1)(_EmbedActor)
        self._actors = [remote.remote(self.settings) for _ in range(self.n_actors)]
        self._idle = asyncio.Queue()
        for actor in self._actors:
            self._idle.put_nowait(actor)

    async def _embed(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            await asyncio.gather(*(self._on_idle_actor(images[s]) for s in batch_slices(len(images), self.batch_size)))
        )

    async def _on_idle_actor(self, images: np.ndarray) -> np.ndarray:
        assert self._idle is not None, "start() the RayEmbedder first"
        actor = await self._idle.get()
        try:
            return await actor.embed.remote(images)
        finally:
            self._idle.put_nowait(actor)

    async def ready(self) -> bool:
        return bool(self._actors)

    async def close(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


def _for_actors(settings: dict) -> dict:
    """Embedder settings as an actor on another node needs them."""
    if settings.get("artifact") is not None:  # workers need not share the driver's working directory
        settings = {**settings, "artifact": Path(settings["artifact"]).absolute()}
    if settings.get("backend") == "onnx":
        # One core per actor (its Ray CPU); ONNX Runtime would otherwise start a thread per core in every actor.
        # Calls come one batch at a time, so the micro-batcher would only wait for company that never comes.
        settings = {"intra_op_threads": 1, "micro_batch": False, **settings}
    return settings


def index_items_ray(
    root: Path,
    items: Sequence[Item],
    gallery: Gallery,
    spec: ModelSpec,
    embedder: dict,
    *,
    batch_size: int = 64,
    actors: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    crops: CropStore | None = None,
) -> Summary:
    """ingestion.bulk.index_items with the embedding on the Ray that is initialised: ``embedder`` holds the keyword
    arguments of embedders.create_embedder for the actors (which start their own), ``spec`` what it serves;
    ``batch_size`` images per actor call, ``actors`` (default: one per CPU of the cluster) calls at once."""
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))

    async def run() -> Summary:
        on_ray = RayEmbedder(spec, embedder, actors=actors, batch_size=batch_size)
        await on_ray.start()
        try:
            # A pipeline batch holds a slice for every actor, so all of them are busy while the next one decodes.
            return await index_items(
                root,
                items,
                gallery,
                on_ray,
                batch_size=batch_size * actors,
                workers=workers,
                progress=progress,
                crops=crops,
            )
        finally:
            await on_ray.close()

    return asyncio.run(run())


def index_folder_ray(
    folder: str | os.PathLike,
    gallery: Gallery,
    spec: ModelSpec,
    embedder: dict,
    *,
    batch_size: int = 64,
    actors: int | None = None,
    workers: int | None = None,
    layout: Layout = "auto",
    progress: bool = False,
    crops: CropStore | None = None,
) -> Summary:
    """ingestion.bulk.index_folder with the embedding on Ray: a folder of crops or a CSV manifest into the gallery,
    idempotently; with ``crops``, each added file's bytes are kept there first."""
    root, items, skipped = find_items(folder, layout)
    summary = index_items_ray(
        root,
        items,
        gallery,
        spec,
        embedder,
        batch_size=batch_size,
        actors=actors,
        workers=workers,
        progress=progress,
        crops=crops,
    )
    summary.skipped[:0] = skipped
    return summary
