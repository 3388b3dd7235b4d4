"""The gallery: a folder holding a faiss snapshot, the SQLite log of record and a manifest.

    gallery.sqlite       vectors (float32 blobs) + metadata, committed before an add returns (the log of record)
    index.NNNNNN.faiss   the faiss index as of the manifest's watermark, written atomically
    manifest.json        model_id, dim, metric, factory, counts, sha256 of the snapshot, watermark, the log it
                         belongs to (gallery id, digest of the rows it covers), self-checksum
    trained.faiss        the IVF index as trained, still empty (sha256 in the log): a rebuild reuses it, no retraining
    gallery.lock         fcntl lock held by the one writer process

Opening verifies the manifest and snapshot checksums and that they belong to this log (the gallery id the log
holds, and a digest of the rows the snapshot covers), catches the snapshot up from the log (rows after the
watermark added, removals after it applied) and checks that the index and the log agree. A torn, corrupt,
foreign or stale snapshot or manifest is rebuilt from the log and reported in ``stats()["recovered"]``; a
corrupt log, a log behind its snapshot (acknowledged writes lost) and a missing log where the folder shows
the gallery held items are refused with CorruptGallery (MissingLog): starting such a folder empty takes
``allow_missing_log=True``. Vectors are L2-normalised and searched by inner product (cosine similarity).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from index import faiss_index, filters_faiss, growth
from index.errors import CorruptGallery, GalleryError, GalleryLocked, InvalidVector, MissingLog, ModelMismatch
from index.gallery_snapshots import (
    DB,
    METRIC,
    Snapshots,
    items_without_log,
    missing_log_message,
    now_iso,
)
from index.protocol import GalleryBase
from index.records import Hit, Identity, Record, SearchFilter, aggregate_identities
from index.rwlock import RWLock
from index.snapshot import MANIFEST, SnapshotError
from index.store import GALLERY_ID, Store
from index.tracks import TrackTables

__all__ = [
    "CorruptGallery",
    "Gallery",
    "GalleryError",
    "GalleryLocked",
    "Hit",
    "Identity",
    "InvalidVector",
    "MissingLog",
    "ModelMismatch",
    "Record",
    "SearchFilter",
    "aggregate_identities",
]

LOCK = "gallery.lock"
CALIBRATION_KEY = "calibration"  # in the log's settings: the verdict calibration as JSON
FILTER_OVERFETCH = 4  # first fetch is k * this when filters are given; every widening multiplies it again
SNAPSHOT_EVERY = 50_000  # mutations between automatic snapshots: bounds the catch-up work on open
COMPACT_AT = 1024  # removed ids left in the index (tombstones) before it is compacted off the search path


class Gallery(TrackTables, Snapshots, GalleryBase):
    """Use Gallery.create / open / open_or_create; the constructor does no I/O.

    Concurrency: searches run on any thread, many at once, and never wait for a write. Writes (add, remove,
    training, snapshots) take the write mutex one at a time; of those, only the swap of the faiss index or an
    add into it (a memcpy for Flat and IVF) takes the index lock that searches share. Removals leave tombstones
    (searches skip ids the log no longer holds); compaction, IVF training and HNSW rebuilds build the new index
    beside the one being searched and swap it in; snapshots serialise the index under the shared side.
    """

    backend = "embedded"

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        threads: int | None = None,
        snapshot_every: int | None = None,
        gpu: bool = False,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.threads = threads or len(os.sched_getaffinity(0))  # for batches above SMALL_BATCH
        self.snapshot_every = SNAPSHOT_EVERY if snapshot_every is None else snapshot_every
        self.gpu = gpu  # search Flat and IVF indexes on GPU 0 when faiss-gpu sees one (HNSW stays on the CPU)
        self._on_gpu = False
        self._store = Store(self.path / DB, readonly)
        self._rw = RWLock()  # guards self._index: many searches or one mutation
        self._write_mutex = threading.Lock()  # one mutation (log + index) at a time
        self._lock_fd: int | None = None
        self._closed = False
        self._settings: dict[str, str] = {}
        self._kind: faiss_index.IndexKind | None = None
        self._index: faiss.Index | None = None
        self._trained = False
        self._tombstones: set[int] = set()  # removed ids still inside an index that cannot remove (HNSW)
        self._last_id = 0
        self._last_seq = 0
        self._count = 0
        self._dirty = 0
        self._recovered: list[str] = []
        self._calibration_text: str | None = None  # the parsed calibration() and the text it came from
        self._calibration: dict | None = None
        self._open_seconds = 0.0
        self._columns = filters_faiss.ColumnIndex()  # the filterable columns, for filters applied inside faiss
        self._growth: growth.Grower | None = None  # factory "auto": picks and rebuilds the index as it grows

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        model_id: str,
        dim: int,
        factory: str = "Flat",
        allow_missing_log: bool = False,
        **options,
    ) -> Gallery:
        """A new, empty gallery in ``path``. A folder whose log is gone but whose snapshot or manifest shows it
        held items is refused (MissingLog) unless ``allow_missing_log``: then the old files are set aside."""
        path = Path(path)
        if not model_id or dim < 1:
            raise ValueError("a gallery needs a model_id and a positive dim")
        faiss_index.parse_factory(factory, dim)
        path.mkdir(parents=True, exist_ok=True)
        gallery = cls(path, readonly=False, **options)
        gallery._acquire_lock()
        try:
            if (path / DB).exists():
                raise GalleryError(f"a gallery already exists in {path}")
            evidence = items_without_log(path)
            if evidence and not allow_missing_log:
                raise MissingLog(missing_log_message(evidence))
            if evidence:
                gallery._recovered.append(f"{DB} was missing while {evidence}; started an empty log as allowed")
                for name in (f"{DB}-wal", f"{DB}-shm", f"{DB}-journal"):  # never replayed into the new log
                    if (path / name).exists():
                        os.replace(path / name, path / f"{name}.orphaned")
            settings = {"model_id": model_id, "dim": str(dim), "factory": factory, "metric": METRIC}
            settings["created_at"] = now_iso()
            settings[GALLERY_ID] = uuid.uuid4().hex
            gallery._store.initialise(settings)
            gallery._load()
        except BaseException:
            gallery.close()
            raise
        return gallery

    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = False, **options) -> Gallery:
        path = Path(path)
        if not (path / DB).is_file():
            if evidence := items_without_log(path):
                raise MissingLog(missing_log_message(evidence))
            raise GalleryError(f"no gallery in {path} ({DB} is missing)")
        gallery = cls(path, readonly=readonly, **options)
        try:
            if not readonly:
                gallery._acquire_lock()
            gallery._load()
        except BaseException:
            gallery.close()
            raise
        return gallery

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        *,
        model_id: str,
        dim: int,
        factory: str = "Flat",
        allow_missing_log: bool = False,
        **options,
    ) -> Gallery:
        """Open the gallery in ``path`` (which must hold model_id and dim), or create it; factory applies on creation.
        A folder that lost its log is refused (MissingLog) unless ``allow_missing_log`` (see create)."""
        if (Path(path) / DB).is_file():
            gallery = cls.open(path, **options)
            try:
                gallery._check_model(model_id)
                if gallery.dim != dim:
                    raise ModelMismatch(f"the gallery holds {gallery.dim}-d vectors, not {dim}-d")
            except BaseException:
                gallery.close()
                raise
            return gallery
        return cls.create(
            path, model_id=model_id, dim=dim, factory=factory, allow_missing_log=allow_missing_log, **options
        )

    def _acquire_lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GalleryLocked(f"another writer holds {self.path / LOCK}; open read-only or stop it") from None
        self._lock_fd = fd

    def _load(self) -> None:
        started = time.perf_counter()
        self._settings = self._store.check()
        try:
            dim = int(self._settings["dim"])
            self._kind = faiss_index.parse_factory(self._settings["factory"], dim)
            self._settings["model_id"]  # noqa: B018 (must exist)
            if self._kind.family == "auto":
                self._growth = growth.Grower(self, growth.Policy.parse(self._kind.factory))
        except (KeyError, ValueError) as exc:
            raise CorruptGallery(f"gallery settings in {self.path / DB} are incomplete or wrong: {exc}") from exc
        if not self.readonly:
            self._store.upgrade()
            if GALLERY_ID not in self._settings:  # a log from before galleries had an id: its snapshot is rebuilt
                self._settings[GALLERY_ID] = uuid.uuid4().hex
                self._store.set_setting(GALLERY_ID, self._settings[GALLERY_ID])
        with self._store.view() as conn:  # one consistent view of the log for the whole load
            try:
                self._load_snapshot(conn)
            except SnapshotError as exc:
                self._recovered.append(f"{exc}; rebuilt from the log")
                self._store.verify_records(conn)  # what the rebuild serves must be this gallery's rows
                self._rebuild(conn)
        if not self.readonly:
            if self._recovered or self._dirty or not (self.path / MANIFEST).exists():
                with self._write_mutex:
                    self._maybe_train()
                    self._write_snapshot()
            with self._write_mutex:
                self._tracks_catch_up()  # tracks behind the log (a crash after an add's commit) are caught up
            self._remove_stale_files()
        self._open_seconds = time.perf_counter() - started

    def refresh(self) -> int:
        """Catch up with rows another process wrote since this gallery was opened (read-only galleries)."""
        with self._write_mutex, self._store.view() as conn:
            return self._catch_up(conn)

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._settings["model_id"]

    @property
    def dim(self) -> int:
        return int(self._settings["dim"])

    @property
    def factory(self) -> str:
        return self._settings["factory"]

    def __len__(self) -> int:
        return self._count

    # -- validation ----------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise GalleryError("the gallery is open read-only")

    # -- writes --------------------------------------------------------------------------------------------

    def add(self, xb, records: Sequence[Record], *, model_id: str) -> list[int]:
        """Add vectors with their records; returns the new ids once they are committed to the log."""
        with self._write_mutex:
            return self._add_locked(xb, records, model_id)

    def _add_locked(self, xb, records: Sequence[Record], model_id: str) -> list[int]:
        self._check_writable()
        self._check_model(model_id)
        xb = self._unit_vectors(xb, "vectors")
        records = list(records)
        if len(records) != len(xb):
            raise ValueError(f"{len(xb)} vectors but {len(records)} records")
        for r in records:
            if not isinstance(r.metadata or {}, dict):
                raise ValueError("Record.metadata must be a dict")
            json.dumps(r.metadata or {})  # TypeError before anything is written, if not JSON
        if not len(xb):
            return []
        self._check_open()
        ids = self._store.insert(xb, records)
        self._tracks_after_write()
        assert self._index is not None  # an open gallery has its index
        with self._rw.write():
            self._index.add_with_ids(xb, np.asarray(ids, dtype=np.int64))
        self._last_id = ids[-1]
        self._count += len(ids)
        self._dirty += len(ids)
        self._maybe_train()
        self._maybe_snapshot()
        return ids

    def remove(self, ids) -> int:
        """Remove the ids that exist; returns how many were removed. Ids are never reused.

        Searches stop returning them as soon as the log commits (a hit whose record is gone is skipped); the
        vectors stay in the index as tombstones until a compaction, which never holds up a search."""
        self._check_writable()
        wanted = sorted({int(i) for i in np.asarray(ids, dtype=np.int64).ravel() if i >= 0})
        with self._write_mutex:
            self._check_open()
            removed, seq = self._store.delete(wanted)
            self._tracks_after_write()
            self._tombstones.update(removed)
            self._last_seq = seq
            self._count -= len(removed)
            self._dirty += len(removed)
            if len(self._tombstones) >= COMPACT_AT:
                self._compact()
            self._maybe_snapshot()
        return len(removed)

    def _compact(self) -> None:
        """Drop the tombstones from the index: a copy loses them while searches use the original, then the copy
        is swapped in. Indexes that cannot remove (HNSW, GPU) are rebuilt from the log by the next snapshot.
        Caller holds the write mutex. The copy costs the index's memory again, for as long as it runs."""
        assert self._kind is not None  # set when the gallery opens
        if not self._tombstones or not self._kind.can_remove or self._on_gpu:
            return
        gone = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
        with self._rw.read():
            index = faiss.clone_index(self._index)
        index.remove_ids(gone)
        faiss_index.set_search_params(index, self.nprobe, self.ef_search)
        with self._rw.write():
            self._index = index
            self._tombstones = set()

    def _remove_from_index(self, ids: list[int]) -> None:
        assert self._kind is not None and self._index is not None  # set when the gallery opens
        if self._kind.can_remove and not self._on_gpu:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        else:
            self._tombstones.update(ids)

    def _maybe_train(self) -> None:
        """Swap the exact stand-in for the factory's index once there are enough vectors to train it."""
        if self._growth is not None:  # "auto" builds off the write path, on its own thread
            return self._growth.after_write()
        assert self._kind is not None  # set when the gallery opens
        if self._trained or not self._kind.needs_training or self._count < self._kind.min_train_size:
            return
        with self._store.view() as conn:
            self._rebuild(conn)

    def _maybe_snapshot(self) -> None:
        if self._dirty >= self.snapshot_every:
            self._compact()
            self._write_snapshot()

    def snapshot(self) -> None:
        """Write the index and manifest now (also done on close and every ``snapshot_every`` mutations)."""
        self._check_writable()
        with self._write_mutex:
            self._compact()
            self._write_snapshot()

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, id: int) -> Record | None:
        self._check_open()
        return None if int(id) < 0 else self._store.get(int(id))

    def find_hash(self, content_hash: str) -> int | None:
        return self.find_hashes([content_hash]).get(content_hash)

    def find_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """The id already stored under each content hash the gallery holds."""
        self._check_open()
        return self._store.find_hashes(hashes)

    def records(self, ids: Sequence[int]) -> dict[int, Record]:
        """Records of the ids that exist (removed ids are simply absent)."""
        self._check_open()
        return self._store.records([int(i) for i in ids if int(i) >= 0])

    def check_compatible(self, model_id: str, dim: int | None) -> None:
        """ModelMismatch unless the gallery holds ``dim``-d embeddings of ``model_id``."""
        self._check_model(model_id)
        if dim is not None and dim != self.dim:
            raise ModelMismatch(f"the gallery holds {self.dim}-d vectors, not {dim}-d")

    def scan(self, after_id: int, limit: int) -> tuple[np.ndarray, np.ndarray, list[Record]]:
        """Up to ``limit`` items with id > after_id, in id order: (ids, vectors, records), read in one view."""
        self._check_open()
        with self._store.view() as conn:
            chunks = self._store.vectors_after(conn, int(after_id), self.dim, limit=limit)
            ids, xb = next(chunks, (np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)))
            chunks.close()
            found = self._store.records(ids.tolist(), conn)
        return ids, xb, [found[int(i)] for i in ids]

    def import_items(self, ids: Sequence[int], xb, records: Sequence[Record], *, model_id: str) -> int:
        """Add items under the ids they have in another gallery (reid gallery copy), with their added_at. The
        ids must be increasing and above every id this gallery ever assigned (copies go in id order)."""
        ids = [int(i) for i in ids]
        records = list(records)
        if len(records) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(records)} records")
        if any(b <= a for a, b in zip(ids, ids[1:], strict=False)) or any(i < 1 for i in ids):
            raise ValueError("imported ids must be positive and increasing")
        with self._write_mutex:
            self._check_writable()
            self._check_model(model_id)
            xb = self._unit_vectors(xb, "vectors")
            if len(xb) != len(ids):
                raise ValueError(f"{len(xb)} vectors but {len(ids)} ids")
            if not ids:
                return 0
            if ids[0] <= self._last_id:
                raise GalleryError(f"the gallery already assigned ids up to {self._last_id}; cannot import {ids[0]}")
            self._store.insert(xb, records, given_ids=ids, keep_added_at=True)
            self._tracks_after_write()
            assert self._index is not None  # an open gallery has its index
            with self._rw.write():
                self._index.add_with_ids(xb, np.asarray(ids, dtype=np.int64))
            self._last_id = ids[-1]
            self._count += len(ids)
            self._dirty += len(ids)
            self._maybe_train()
            self._maybe_snapshot()
        return len(ids)

    def search(self, xq, k: int, filters: SearchFilter | None = None, *, model_id: str) -> list[list[Hit]]:
        """Top-k hits per query, best first, with their records; fewer than k when the gallery runs out.

        Filters are applied inside the faiss search (an id selector, index.filters_faiss); on a GPU index, which
        takes none, the search over-fetches and widens (x4 each round) until every query has k hits that pass or
        the index has nothing more to give.
        """
        self._check_open()
        self._check_model(model_id)
        xq = self._unit_vectors(xq, "queries")
        if k < 1:
            raise ValueError("k must be at least 1")
        active = filters if filters is not None and not filters.is_empty else None
        results: list[list[Hit]] = [[] for _ in range(len(xq))]
        assert self._index is not None  # an open gallery has its index
        with self._rw.read():
            ntotal, holes = self._index.ntotal, len(self._tombstones)
        # Filters go inside the faiss search as an id selector (not on GPU indexes, which take none: those
        # over-fetch). A few extra for removed ids still in the index; the widening below covers any shortfall.
        selection = None if active is None or self._on_gpu else self._columns.selection(self._store, active)
        overfetch = FILTER_OVERFETCH if active is not None and selection is None else 1
        fetch = min(ntotal, k * overfetch + min(holes, k))
        pending = list(range(len(xq)))
        while pending and fetch > 0:
            # GPU indexes are not thread-safe even for searches: those take the exclusive side of the lock.
            with self._rw.write() if self._on_gpu else self._rw.read():
                D, I = self._search_index(xq[pending], fetch, selection)  # noqa: E741, N806 (faiss vocabulary)
                ntotal = self._index.ntotal
            found = I[I >= 0]  # faiss pads with -1: never a gallery id
            records = self._store.records(np.unique(found).tolist())
            still = []
            for row, qi in enumerate(pending):
                hits = []
                for score, i in zip(D[row], I[row], strict=True):
                    record = records.get(int(i)) if i >= 0 else None
                    if record is None or (active is not None and not active.matches(record)):
                        continue  # padding, removed since the search, or filtered out
                    hits.append(Hit(int(i), float(score), record))
                    if len(hits) == k:
                        break
                results[qi] = hits
                exhausted = int((I[row] >= 0).sum()) < fetch or fetch >= ntotal
                if len(hits) < k and not exhausted:
                    still.append(qi)
            pending, fetch = still, min(ntotal, fetch * FILTER_OVERFETCH)
        return results

    def _search_index(self, xq: np.ndarray, k: int, selection: filters_faiss.Selection | None):
        if self._growth is not None:
            return self._growth.search(self._index, xq, k, selection)
        return filters_faiss.search(self._index, xq, k, self.threads, self.nprobe, selection)

    def stats(self) -> dict:
        self._check_open()
        assert self._kind is not None and self._index is not None  # set when the gallery opens
        with self._rw.read():
            index_type = type(self._index).__name__
            ntotal = self._index.ntotal
        return {
            "path": str(self.path),
            "model_id": self.model_id,
            "dim": self.dim,
            "metric": METRIC,
            "factory": self.factory,
            "trained": self._trained,
            "serving": self.factory if self._trained or not self._kind.needs_training else "Flat (until trained)",
            "min_train_size": self._kind.min_train_size,
            "index_type": index_type,
            "count": self._count,
            "ntotal": ntotal,
            "tombstones": len(self._tombstones),
            "unsnapshotted": self._dirty,
            "watermark": {"last_id": self._last_id, "last_removal_seq": self._last_seq},
            "readonly": self.readonly,
            "gpu": self._on_gpu,
            "nprobe": self.nprobe or faiss_index.DEFAULT_NPROBE,
            "ef_search": self.ef_search or faiss_index.DEFAULT_EF_SEARCH,
            "open_seconds": round(self._open_seconds, 4),
            "recovered": list(self._recovered),
            "index_choice": None if self._growth is None else self._growth.stats(),
        }

    # -- calibration ---------------------------------------------------------------------------------------

    def calibration(self) -> dict | None:
        """The verdict calibration stored with ``set_calibration`` (a JSON object), or None. The same object is
        returned until the calibration changes: callers must not mutate it."""
        self._check_open()
        text = self._settings.get(CALIBRATION_KEY)
        if text != self._calibration_text:
            self._calibration = None if text is None else json.loads(text)
            self._calibration_text = text
        return self._calibration

    def set_calibration(self, calibration: dict) -> None:
        """Store the verdict calibration (index.calibration, ``python -m index.calibrate``) in the log's
        settings: durable once this returns, read by every later open."""
        self._check_writable()
        text = json.dumps(calibration, sort_keys=True)
        with self._write_mutex:
            self._store.set_setting(CALIBRATION_KEY, text)
            self._settings[CALIBRATION_KEY] = text

    # -- closing -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Snapshot pending changes (writers), release the lock and the database. Safe to call twice."""
        if self._closed:
            return
        try:
            if self._growth is not None:
                self._growth.close()
            if not self.readonly and self._index is not None and self._dirty:
                with self._write_mutex:
                    self._compact()
                    self._write_snapshot()
        finally:
            self._closed = True
            self._store.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None
