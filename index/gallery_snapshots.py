"""The embedded gallery's index on disk: how it comes back when a gallery opens and how it is written.

Opening loads the snapshot named by the manifest, verified against the log (model, gallery id, watermark, digest
of the rows it covers, checksums), then catches it up from the log; anything torn, foreign or stale is rebuilt
from the log instead. Writing serialises the index to a new generation file and the manifest, atomically, and
removes the files no manifest names. ``Snapshots`` is a part of index.gallery.Gallery (its state lives there);
this module holds the jobs that touch the folder's files, so the gallery module keeps the reads and writes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from index import faiss_index
from index.errors import CorruptGallery
from index.snapshot import MANIFEST, Manifest, SnapshotError, read_manifest, read_verified, sha256, write_atomic
from index.store import GALLERY_ID

if TYPE_CHECKING:
    from index.growth import Grower
    from index.rwlock import RWLock
    from index.store import Store

DB = "gallery.sqlite"
TRAINED = "trained.faiss"
TRAINED_KEY = "trained_sha256"  # in the log's settings, so a rebuild can trust trained.faiss without the manifest
METRIC = "inner_product"
INDEX_FILE = re.compile(r"index\.(\d{6})\.faiss")


class Snapshots:
    """The snapshot and rebuild steps of index.gallery.Gallery, which owns the state they use (path, readonly,
    _store, _settings, _kind, _index, _rw, _tombstones, _last_id, _last_seq, _count, _dirty, _recovered)."""

    if TYPE_CHECKING:  # the gallery's state and methods these steps use, declared for the type checker
        path: Path
        readonly: bool
        gpu: bool
        nprobe: int | None
        ef_search: int | None
        _store: Store
        _settings: dict[str, str]
        _kind: faiss_index.IndexKind | None
        _rw: RWLock
        _growth: Grower | None
        _recovered: list[str]
        _tombstones: set[int]

        @property
        def model_id(self) -> str: ...
        @property
        def dim(self) -> int: ...
        @property
        def factory(self) -> str: ...
        def _remove_from_index(self, ids: list[int]) -> None: ...

    def _load_snapshot(self, conn) -> None:
        manifest = read_manifest(self.path)
        expected = (self.model_id, self.dim, self.factory, METRIC)
        found = (manifest.model_id, manifest.dim, manifest.factory, manifest.metric)
        if found != expected:
            raise SnapshotError(f"manifest says {found}, the log says {expected}")
        if not manifest.gallery_id or manifest.gallery_id != self._settings.get(GALLERY_ID):
            raise SnapshotError("the manifest belongs to another gallery's log (gallery id differs)")
        try:
            ntotal, last_id = int(manifest.counts["ntotal"]), int(manifest.watermark["last_id"])
            last_seq = int(manifest.watermark["last_removal_seq"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"manifest counts or watermark are malformed ({exc!r})") from None
        log_id, log_seq = self._store.log_position(conn)
        if last_id > log_id or last_seq > log_seq:
            # The snapshot saw writes the log no longer has: acknowledged items were lost with the log.
            raise CorruptGallery(
                f"the log {self.path / DB} ends at id {log_id} (removal {log_seq}) but its snapshot covers id"
                f" {last_id} (removal {last_seq}): acknowledged writes are missing from the log (an older copy?);"
                f" restore the log, or delete {MANIFEST} to serve the log as it is"
            )
        if manifest.covers != self._store.covered_digest(conn, last_id, last_seq):
            raise SnapshotError("the manifest's digest of the rows it covers disagrees with the log")
        data = read_verified(self.path, manifest)
        try:
            index = faiss_index.from_bytes(data)
        except RuntimeError as exc:
            raise SnapshotError(f"snapshot {manifest.index_file} does not load ({exc})") from None
        if index.d != self.dim or index.ntotal != ntotal:
            raise SnapshotError(f"snapshot {manifest.index_file} disagrees with the manifest")
        self._install(index, bool(manifest.trained), last_id, last_seq)
        self._catch_up(conn)
        self._check_consistent(conn)

    def _install(self, index: faiss.Index, trained: bool, last_id: int, last_seq: int) -> None:
        faiss_index.set_search_params(index, self.nprobe, self.ef_search)
        assert self._kind is not None  # set when the gallery opens
        on_gpu = self.gpu and self._kind.family != "hnsw" and faiss_index.gpu_available()
        if on_gpu:
            index = faiss_index.to_gpu(index)
        with self._rw.write():
            self._on_gpu = on_gpu
            self._index = index
            self._trained = trained
            self._tombstones = set()
        self._last_id, self._last_seq = last_id, last_seq

    def _catch_up(self, conn) -> int:
        """Apply the log after the watermark (removals of older rows, then newer rows); returns rows applied."""
        last_id, last_seq = self._store.log_position(conn)
        removed = [i for i in self._store.removals_after(conn, self._last_seq) if i <= self._last_id]
        applied = len(removed)
        with self._rw.write():
            if removed:
                self._remove_from_index(removed)
            for ids, xb in self._store.vectors_after(conn, self._last_id, self.dim):
                self._index.add_with_ids(xb, ids)
                applied += len(ids)
        self._last_id, self._last_seq = last_id, last_seq
        self._count = self._store.count(conn)
        self._dirty += applied
        return applied

    def _check_consistent(self, conn) -> None:
        live = self._index.ntotal - len(self._tombstones)
        if live != self._store.count(conn):
            raise SnapshotError(f"the index holds {live} live vectors, the log {self._count}")

    def _rebuild(self, conn) -> None:
        """A fresh index from every live vector in the log (trained if the factory needs it and there are enough)."""
        chunks = list(self._store.vectors_after(conn, 0, self.dim))
        ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, dtype=np.int64)
        xb = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, self.dim), dtype=np.float32)
        assert self._kind is not None  # set when the gallery opens
        trained_empty = self._trained_empty(conn) if self._kind.needs_training else None
        index, trained, fresh = faiss_index.build_index(self._kind, self.dim, xb, ids, trained_empty)
        if fresh is not None and not self.readonly:
            write_atomic(self.path / TRAINED, fresh)
            self._store.set_setting(TRAINED_KEY, sha256(fresh))
        last_id, last_seq = self._store.log_position(conn)
        self._install(index, trained, last_id, last_seq)
        self._count = len(ids)
        self._dirty += 1

    def _trained_empty(self, conn) -> faiss.Index | None:
        """The gallery's earlier IVF training, if it was saved and verifies; None means train again."""
        expected = self._store.setting(conn, TRAINED_KEY)
        if expected is None:
            return None
        try:
            data = (self.path / TRAINED).read_bytes()
            if sha256(data) != expected:
                raise ValueError("checksum mismatch")
            index = faiss_index.from_bytes(data)
            if index.d != self.dim or index.ntotal != 0 or not index.is_trained:
                raise ValueError("not an empty trained index of this dimension")
        except (OSError, RuntimeError, ValueError) as exc:
            self._recovered.append(f"{TRAINED} unusable ({exc}); trained again from the log")
            return None
        return index

    def _write_snapshot(self) -> None:
        # Caller holds the write mutex, so the index and the watermark do not move underneath us.
        if self._tombstones:  # HNSW cannot drop vectors: a snapshot holds live vectors only
            with self._store.view() as conn:
                self._rebuild(conn)
        with self._rw.write() if self._on_gpu else self._rw.read():
            data = faiss_index.to_bytes(self._index)
            ntotal = self._index.ntotal
        with self._store.view() as conn:
            covers = self._store.covered_digest(conn, self._last_id, self._last_seq)
        name = f"index.{self._next_generation():06d}.faiss"
        write_atomic(self.path / name, data)
        manifest = Manifest(
            model_id=self.model_id,
            dim=self.dim,
            metric=METRIC,
            factory=self.factory,
            trained=self._trained,
            index_file=name,
            counts={"vectors": self._count, "ntotal": ntotal},
            checksums={name: sha256(data)},
            watermark={"last_id": self._last_id, "last_removal_seq": self._last_seq},
            written_at=now_iso(),
            gallery_id=self._settings[GALLERY_ID],
            covers=covers or "",
            index_choice=self._growth.manifest_entry() if self._growth is not None else {},
        )
        write_atomic(self.path / MANIFEST, manifest.to_bytes())
        self._dirty = 0
        self._remove_stale_files(keep=name)

    def _next_generation(self) -> int:
        found = [int(m.group(1)) for p in self.path.iterdir() if (m := INDEX_FILE.fullmatch(p.name))]
        return max(found, default=0) + 1

    def _remove_stale_files(self, keep: str | None = None) -> None:
        """Snapshots the manifest no longer names and temp files left by a crash."""
        if keep is None:
            try:
                keep = read_manifest(self.path).index_file
            except SnapshotError:
                return
        for p in self.path.iterdir():
            if (INDEX_FILE.fullmatch(p.name) and p.name != keep) or (
                p.name.startswith(".") and p.name.endswith(".tmp")
            ):
                p.unlink(missing_ok=True)


def items_without_log(path: Path) -> str | None:
    """What in a folder without its log shows that the gallery held items, or None (never held any)."""
    if not path.is_dir():
        return None
    if (path / f"{DB}-wal").is_file() and (path / f"{DB}-wal").stat().st_size:
        return f"{DB}-wal is still there"
    if (path / TRAINED).exists():
        return f"{TRAINED} shows the index was trained on items"
    if (path / MANIFEST).exists():
        try:
            manifest = read_manifest(path)
            vectors, last_id = int(manifest.counts.get("vectors", 0)), int(manifest.watermark.get("last_id", 0))
        except (SnapshotError, AttributeError, TypeError, ValueError):
            return f"{MANIFEST} is there but unreadable (it may count items)"
        if vectors or last_id:
            return f"{MANIFEST} counts {vectors} items (ids up to {last_id})"
    for p in sorted(path.iterdir()):
        if INDEX_FILE.fullmatch(p.name):
            try:
                ntotal = faiss_index.from_bytes(p.read_bytes()).ntotal
            except (OSError, RuntimeError):
                return f"snapshot {p.name} is there but unreadable (it may hold items)"
            if ntotal:
                return f"snapshot {p.name} holds {ntotal} vectors"
    return None


def missing_log_message(evidence: str) -> str:
    return (
        f"the gallery's log of record ({DB}) is missing while {evidence}; restore the log, or open with"
        " allow_missing_log=True to start an empty gallery"
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
