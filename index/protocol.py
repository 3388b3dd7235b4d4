"""The Gallery protocol: what the server, bulk indexing and ``reid gallery copy`` use, whatever holds the vectors.

Two backends implement it: the embedded store (index.gallery.Gallery: a folder with faiss and the SQLite log) and
Milvus (index.milvus.MilvusGallery: a Milvus server, or Milvus Lite in a ``.db`` file). index.open_gallery picks
one from a URI. Both share the plain data of index.records, the errors of index.errors and
index.records.aggregate_identities, so a caller cannot tell them apart.

Contract (tests/index/test_conformance.py runs it against both):
- vectors are L2-normalised on the way in and compared by inner product; a vector or query of another model_id or
  dim is refused with ModelMismatch; NaN, inf and zero vectors with InvalidVector;
- ids are positive int64, assigned by the gallery, increasing and never reused; ``import_items`` keeps the ids of
  another gallery (that is how a copy keeps them stable);
- an acknowledged add is found by the next search; a removed id is never returned again;
- ``add_new`` adds each content hash once, atomically within one process;
- searches never wait for writes: they may run on any thread, concurrently with each other and with one writer;
- tracks follow their items: an added item with a track_id is in its track when the add returns, a track whose
  last item is removed is gone (identity and all); identity numbers are reserved from the gallery, never reused.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import numpy as np

from index.errors import GalleryError, InvalidVector, ModelMismatch
from index.records import Hit, Record, SearchFilter
from index.track_records import IdentitySummary, Track, TrackQuery


@runtime_checkable
class Gallery(Protocol):
    backend: str  # "embedded" | "milvus"

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def factory(self) -> str: ...

    def __len__(self) -> int: ...

    def __enter__(self) -> Gallery: ...

    def __exit__(self, *exc) -> None: ...

    # writes: serialised inside the gallery, durable once they return
    def add(self, xb, records: Sequence[Record], *, model_id: str) -> list[int]: ...

    def add_new(self, xb, records: Sequence[Record], *, model_id: str) -> list[tuple[int, bool]]: ...

    def import_items(self, ids: Sequence[int], xb, records: Sequence[Record], *, model_id: str) -> int: ...

    def remove(self, ids) -> int: ...

    # reads
    def get(self, id: int) -> Record | None: ...

    def records(self, ids: Sequence[int]) -> dict[int, Record]: ...

    def find_hashes(self, hashes: Sequence[str]) -> dict[str, int]: ...

    def search(self, xq, k: int, filters: SearchFilter | None = None, *, model_id: str) -> list[list[Hit]]: ...

    def scan(self, after_id: int, limit: int) -> tuple[np.ndarray, np.ndarray, list[Record]]: ...

    def stats(self) -> dict: ...

    # the verdict calibration (index.calibration) measured on this gallery, a JSON object; the server prefers it
    def calibration(self) -> dict | None: ...

    def set_calibration(self, calibration: dict) -> None: ...

    # tracks (items sharing a track_id) and identities (index.track_records; index.tracks, index.milvus_tracks)
    def tracks(self, query: TrackQuery | None = None, *, after: int = 0, limit: int = 100) -> list[Track]: ...

    def tracks_of(self, track_ids: Sequence[str]) -> dict[str, Track]: ...

    def track_items(self, track_id: str) -> list[int]: ...

    def track_vectors(self) -> tuple[list[Track], np.ndarray]: ...

    def identities(
        self, query: TrackQuery | None = None, *, after: int = 0, limit: int = 100
    ) -> list[IdentitySummary]: ...

    def identity_tracks(self, identity_id: int) -> list[Track]: ...

    def reserve_identities(self, n: int) -> list[int]: ...

    def set_identities(self, assignments: Mapping[str, int | None]) -> int: ...

    def close(self) -> None: ...


class GalleryBase:
    """What both backends do the same way: checking vectors and model ids, and adding each content hash once.

    A backend provides ``model_id``, ``dim``, ``find_hashes``, ``close``, a ``_write_mutex`` held by every write and
    ``_add_locked`` (an add under that mutex)."""

    _write_mutex: threading.Lock
    _closed: bool = False

    if TYPE_CHECKING:  # each backend's properties

        @property
        def model_id(self) -> str: ...
        @property
        def dim(self) -> int: ...

    def _add_locked(self, xb, records: Sequence[Record], model_id: str) -> list[int]:
        raise NotImplementedError

    def find_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_new(self, xb, records: Sequence[Record], *, model_id: str) -> list[tuple[int, bool]]:
        """Add the records whose content hash the gallery does not hold yet, once each; for every record, its id
        and whether this call added it. The check and the add happen under the write mutex, so two callers adding
        the same bytes at once add them once. Records without a content hash are always added."""
        records = list(records)
        if len(records) != len(xb):
            raise ValueError(f"{len(xb)} vectors but {len(records)} records")
        with self._write_mutex:
            known = self.find_hashes([r.content_hash for r in records if r.content_hash])
            first_of: dict[str, int] = {}
            fresh = [
                i
                for i, r in enumerate(records)
                if not r.content_hash or (r.content_hash not in known and first_of.setdefault(r.content_hash, i) == i)
            ]
            ids = self._add_locked(np.asarray(xb)[fresh], [records[i] for i in fresh], model_id) if fresh else []
        added = dict(zip(fresh, ids, strict=True))
        known.update({h: gid for i, gid in added.items() if (h := records[i].content_hash)})
        # a record not added has a content hash: one without is always added
        return [
            (added[i], True) if i in added else (known[cast(str, r.content_hash)], False) for i, r in enumerate(records)
        ]

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError("the gallery is closed")

    def _check_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ModelMismatch(f"the gallery holds embeddings of model {self.model_id!r}, not {model_id!r}")

    def _unit_vectors(self, x, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise InvalidVector(f"{what} must be a (n, {self.dim}) array, got shape {x.shape}")
        if x.shape[1] != self.dim:
            raise ModelMismatch(f"{what} have {x.shape[1]} dimensions; the gallery holds {self.dim}-d vectors")
        if not np.isfinite(x).all():
            raise InvalidVector(f"{what} contain NaN or inf")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidVector(f"{what} contain a zero vector (no direction to compare)")
        return np.ascontiguousarray(x / norms, dtype=np.float32)
