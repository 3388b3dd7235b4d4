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
- searches never wait for writes: they may run on any thread, concurrently with each other and with one writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from index.records import Hit, Record, SearchFilter


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

    def close(self) -> None: ...
