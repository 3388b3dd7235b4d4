"""Bulk indexing on Ray Data: the files, labels, skips, de-duplication and summary of ingestion.bulk, with the
reading, decoding and embedding spread over a Ray cluster.

    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --ray              # a local Ray in this process
    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --ray auto         # the cluster this node is in
    python -m ingestion.bulk FOLDER --gallery DIR --backend triton --triton-url triton:8001 --ray ray://head:10001

Two streamed passes:

1. every file is read and hashed by stateless Ray tasks; only the hashes come back, and the driver asks the gallery
   which of them it holds. A file already there is a duplicate, and of several files with the same bytes only the
   first goes on, so a rerun costs reads and hashes, never a decode or an embedding;
2. the rest are read, decoded (ingestion.bulk's decoder, the API's) and embedded in ``map_batches`` by a pool of
   actors, each holding one started embedder (ONNX Runtime in-process, or a Triton client). The embeddings stream
   back to the driver, which adds them with ``Gallery.add_new``: a gallery folder takes a single writer, so the
   driver is that writer for every backend.

With a crop store (``--keep-crops``) the driver keeps each file's bytes just before its add (ingestion.bulk's
keep_crops, the threaded path's step): it reads the file a third time, since the actors' bytes do not come back,
and a file whose bytes are no longer those the actor embedded is skipped, never added without its crop. Files the
gallery already holds get their crop kept too where it is missing, read by the driver in pass 1.

New files are read twice, once per pass: the price of skipping known files before any decode without shipping the
gallery's hashes to the workers. Workers import this package by name, so every node needs apnet-reid with the
``server`` and ``cluster`` extras (the API image has them) and sees FOLDER, and for the onnx backend the artifact,
at the same path as the driver.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset
from tqdm import tqdm

from embedders.base import create_embedder
from formats.spec import ModelSpec
from index import Gallery
from index.crops import CropStore, CropStoreFull
from index.errors import ModelMismatch
from ingestion.bulk import (
    Item,
    Layout,
    Summary,
    _prepare,
    find_items,
    keep_crops,
    read_or_skip,
    record_of,
)

LOCAL = "local"  # ray.init's address for a fresh local Ray, whatever RAY_ADDRESS says


@contextmanager
def ray_session(address: str = LOCAL) -> Iterator[None]:
    """Ray for the length of the block: a fresh local instance (address "local"), or a connection to a running
    cluster ("auto", HOST:PORT, ray://HOST:10001). A Ray the caller already started is used and left running."""
    if ray.is_initialized():
        yield
        return
    local = address == LOCAL
    ray.init(
        address=address,
        include_dashboard=False if local else None,
        log_to_driver=False,  # worker logs stay in Ray's session folder; failures come back as exceptions
        logging_level=logging.WARNING,
    )
    # Ray Data's console lines (plan, per-dataset timings, tuning hints) would interleave with this command's bar
    # and summary; its log file in Ray's session folder keeps them all.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


# -- on the workers ------------------------------------------------------------------------------------------


def _hash_files(batch: dict[str, np.ndarray], root: str) -> dict[str, np.ndarray]:
    """Pass 1: the sha256 of each file, or why it cannot be read ("" where there is none)."""
    hashes, skips = [], []
    for rel in batch["rel"]:
        data, skip = read_or_skip(Path(root), str(rel))
        hashes.append(hashlib.sha256(data).hexdigest() if data is not None else "")
        skips.append(skip or "")
    return {"i": batch["i"], "hash": np.array(hashes, dtype=object), "skip": np.array(skips, dtype=object)}


class EmbedFiles:
    """Pass 2, one per actor: read, decode and embed a batch of files with one embedder started for the actor's
    life. Embedders are async; each actor runs its own event loop, one batch at a time."""

    def __init__(self, root: str, embedder: dict) -> None:
        self.root = Path(root)
        self.loop = asyncio.new_event_loop()
        self.embedder = create_embedder(**embedder)
        self.loop.run_until_complete(self.embedder.start())
        self.spec = self.embedder.spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        height, width = self.spec.input.height, self.spec.input.width
        prepared = [_prepare(self.root, Item(str(rel)), height, width) for rel in batch["rel"]]
        xb = np.zeros((len(prepared), self.spec.dim), np.float32)
        ok = [k for k, p in enumerate(prepared) if p.skip is None]
        if ok:
            xb[ok] = self.loop.run_until_complete(self.embedder.embed(np.stack([prepared[k].pixels for k in ok])))
        return {
            "i": batch["i"],
            "hash": np.array([p.content_hash or "" for p in prepared], dtype=object),
            "skip": np.array([p.skip or "" for p in prepared], dtype=object),
            "embedding": xb,
        }

    def __del__(self) -> None:
        with suppress(Exception):  # the actor is going away; there is no one left to report to
            self.loop.run_until_complete(self.embedder.close())
            self.loop.close()


# -- on the driver -------------------------------------------------------------------------------------------


def _files(items: Sequence[Item], indices: Sequence[int], rows_per_block: int) -> Dataset:
    """A dataset of (item index, relative path), in blocks of rows_per_block (Ray schedules per block)."""
    tables = [
        pa.table({"i": pa.array(chunk, pa.int64()), "rel": pa.array([items[i].rel for i in chunk], pa.string())})
        for chunk in (indices[s : s + rows_per_block] for s in range(0, len(indices), rows_per_block))
    ]
    return ray.data.from_arrow(tables)


def _quiet_ray_data() -> None:
    """The summary and tqdm bar are this command's progress; Ray Data's own bars and banners would interleave."""
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def index_items_ray(
    root: Path,
    items: Sequence[Item],
    gallery: Gallery,
    spec: ModelSpec,
    embedder: dict,
    *,
    batch_size: int = 64,
    actors: int | None = None,
    progress: bool = False,
    crops: CropStore | None = None,
) -> Summary:
    """Index items (paths relative to root) on the Ray that is initialised; ``embedder`` holds the keyword
    arguments of embedders.create_embedder for the actors (which start their own), ``spec`` what it serves. With
    ``crops``, each added file's bytes are kept there first (keep_crops); CropStoreFull stops it between batches."""
    if gallery.model_id != spec.model_id or gallery.dim != spec.dim:
        raise ModelMismatch(
            f"the gallery holds {gallery.dim}-d embeddings of {gallery.model_id!r}; "
            f"the embedder serves {spec.dim}-d embeddings of {spec.model_id!r}"
        )
    _quiet_ray_data()
    # Workers need not share the driver's working directory.
    root = Path(root).absolute()
    if embedder.get("artifact") is not None:
        embedder = {**embedder, "artifact": Path(embedder["artifact"]).absolute()}
    if embedder.get("backend") == "onnx":
        # One core per actor (its Ray CPU); ONNX Runtime would otherwise start a thread per core in every actor.
        # Calls come one batch at a time, so the micro-batcher would only wait for company that never comes.
        embedder = {"intra_op_threads": 1, "micro_batch": False, **embedder}
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    summary = Summary()
    skipped_at: list[tuple[int, str]] = []  # (item index, reason): reported in item order, as the threaded path
    started = time.perf_counter()
    with tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True) as bar:

        def advance(n: int) -> None:
            if n:
                bar.update(n)
            bar.set_postfix(indexed=summary.indexed, dup=summary.duplicates, skip=len(skipped_at))

        # Pass 1: hashes. Files the gallery holds are duplicates; the rest wait for the item order to be complete.
        new: list[tuple[int, str]] = []
        block = max(1, min(1024, -(-len(items) // (4 * actors))))
        hashed = _files(items, range(len(items)), block).map_batches(
            _hash_files, fn_kwargs={"root": os.fspath(root)}, batch_format="numpy", udf_modifying_row_count=False
        )
        for batch in hashed.iter_batches(batch_size=None, batch_format="numpy"):
            rows = [
                (int(i), str(h), str(skip)) for i, h, skip in zip(batch["i"], batch["hash"], batch["skip"], strict=True)
            ]
            known = gallery.find_hashes([h for _, h, skip in rows if not skip])
            held = []  # files the gallery holds whose crop is missing (indexed before without a crop store)
            for i, h, skip in rows:
                if skip:
                    skipped_at.append((i, skip))
                elif h in known:
                    summary.duplicates += 1
                    if crops is not None and not crops.exists(h):
                        held.append((items[i].rel, h))
                else:
                    new.append((i, h))
            if held:
                # As the threaded path: a rerun with a crop store fills it. A file gone or changed since it was
                # hashed keeps no crop; it stays a duplicate of what the gallery holds.
                keep_crops(crops, root, held)
            advance(len(rows) - sum(1 for _, h, skip in rows if not skip and h not in known))

        # The first file of each hash (in item order) is embedded; later files with the same bytes share its fate.
        first_of: dict[str, int] = {}
        followers: dict[int, list[int]] = defaultdict(list)
        for i, h in sorted(new):
            leader = first_of.setdefault(h, i)
            if leader != i:
                followers[leader].append(i)
        leaders = sorted(first_of.values())

        # Pass 2: decode and embed on the actors; the driver writes.
        if leaders:
            pool = min(actors, -(-len(leaders) // batch_size))  # an actor without a batch would only start up
            embedded = _files(items, leaders, batch_size).map_batches(
                EmbedFiles,
                fn_constructor_kwargs={"root": os.fspath(root), "embedder": embedder},
                compute=ActorPoolStrategy(size=pool),
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=1,
                udf_modifying_row_count=False,
            )
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                indices = batch["i"].tolist()
                ok = []
                for k, (i, skip) in enumerate(zip(indices, batch["skip"], strict=True)):
                    if skip:
                        skipped_at += [(j, str(skip)) for j in (i, *followers[i])]
                    else:
                        ok.append(k)
                if ok and crops is not None:
                    # The crops before the add, so an item never exists without its crop. The actors' bytes did
                    # not come back: keep_crops reads each file again and refuses one that no longer has the
                    # bytes the actor hashed and embedded.
                    files = [(items[indices[k]].rel, str(batch["hash"][k])) for k in ok]
                    try:
                        reasons = keep_crops(crops, root, files)
                    except CropStoreFull as exc:
                        raise CropStoreFull(
                            f"{exc}; stopped before adding {len(ok)} files, after {summary.indexed} added with "
                            f"their crops"
                        ) from exc
                    for k, reason in zip(ok, reasons, strict=True):
                        if reason is not None:
                            i = indices[k]
                            skipped_at += [(j, reason) for j in (i, *followers[i])]
                    ok = [k for k, reason in zip(ok, reasons, strict=True) if reason is None]
                for k in ok:
                    summary.duplicates += len(followers[indices[k]])
                if ok:
                    records = [record_of(items[indices[k]], str(batch["hash"][k])) for k in ok]
                    stored = gallery.add_new(batch["embedding"][ok], records, model_id=spec.model_id)
                    added = sum(was_added for _, was_added in stored)
                    summary.indexed += added
                    summary.duplicates += len(stored) - added
                advance(sum(1 + len(followers[i]) for i in indices))
    summary.skipped = [(items[i].rel, reason) for i, reason in sorted(skipped_at)]
    summary.seconds = time.perf_counter() - started
    return summary


def index_folder_ray(
    folder: str | os.PathLike,
    gallery: Gallery,
    spec: ModelSpec,
    embedder: dict,
    *,
    batch_size: int = 64,
    actors: int | None = None,
    layout: Layout = "auto",
    progress: bool = False,
    crops: CropStore | None = None,
) -> Summary:
    """ingestion.bulk.index_folder on Ray: a folder of crops or a CSV manifest into the gallery, idempotently;
    with ``crops``, each added file's bytes are kept there first."""
    root, items, skipped = find_items(folder, layout)
    summary = index_items_ray(
        root, items, gallery, spec, embedder, batch_size=batch_size, actors=actors, progress=progress, crops=crops
    )
    summary.skipped[:0] = skipped
    return summary
