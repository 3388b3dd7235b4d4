"""Search filters applied inside the faiss search: a SearchFilter becomes a bitmap of the ids it keeps, passed to
faiss as an IDSelectorBitmap in the search parameters, so the index skips other ids before scoring them instead of
the gallery over-fetching and dropping hits afterwards.

The ids a filter keeps come from an in-memory column index (camera, person, track as integer codes, capture time as
float64, each an array indexed by id: 20 bytes per item), caught up from the SQLite log on each filtered search
(rows after the last id it has seen; ids only grow and records never change, so that is all it needs). A filter is
evaluated with a few vectorised comparisons over the arrays (about 1 ms per million items). Removed ids may stay
set: the index no longer holds them, and the gallery drops any hit whose record is gone.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import faiss
import numpy as np

from index import faiss_index
from index.records import SearchFilter

TEXT_COLUMNS = ("camera", "person", "track")
NONE_CODE = 0  # the code of a missing value (None) in every text column
FEW_CODES = 8  # up to this many values, a filter compares each; beyond, np.isin
CACHED_SELECTIONS = 32


@dataclass
class Selection:
    """The ids a filter keeps, as faiss takes them. ``bitmap`` must outlive ``sel`` (faiss keeps a pointer)."""

    sel: faiss.IDSelectorBitmap
    bitmap: np.ndarray
    kept: int  # how many ids (live or removed) pass the filter
    fraction: float  # kept / the ids the columns cover: how much of the gallery the filter keeps


class ColumnIndex:
    """The filterable columns of a gallery's log, in memory, for building selections. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_id = 0
        self._size = 0  # rows covered: ids 1.._last_id (index 0 unused)
        self._rows = 0  # rows read from the log (live when read)
        self._cache: dict[tuple, Selection] = {}  # (filter, last id read) -> its selection
        self._codes = {name: np.zeros(1, dtype=np.int32) for name in TEXT_COLUMNS}
        self._vocab: dict[str, dict[str, int]] = {name: {} for name in TEXT_COLUMNS}
        self._captured = np.full(1, np.nan)
        self._present = np.zeros(1, dtype=bool)  # rows the log held when read (ids never assigned stay False)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._codes.values()) + self._captured.nbytes + self._present.nbytes

    def catch_up(self, store, conn) -> None:
        """Read the rows the log gained since the last call (the first call reads them all)."""
        with self._lock:
            for rows in store.filter_columns_after(conn, self._last_id):
                self._append(rows)

    def selection(self, store, f: SearchFilter) -> Selection:
        """The selection of the ids ``f`` keeps, after catching up with the log (index.store.Store)."""
        with store.view() as conn:
            self.catch_up(store, conn)
        return self.select(f)

    def _append(self, rows: list[tuple]) -> None:
        last = rows[-1][0]
        self._grow(last + 1)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        for col, name in enumerate(TEXT_COLUMNS, start=1):
            vocab = self._vocab[name]
            codes = [NONE_CODE if r[col] is None else vocab.setdefault(str(r[col]), len(vocab) + 1) for r in rows]
            self._codes[name][ids] = codes
        self._captured[ids] = [_as_time(r[4]) for r in rows]
        self._present[ids] = True
        self._rows += len(rows)
        self._last_id = last

    def _grow(self, size: int) -> None:
        if size <= len(self._present):
            self._size = max(self._size, size)
            return
        capacity = max(size, 2 * len(self._present))  # doubling: appends stay amortised O(1)
        for name in TEXT_COLUMNS:
            self._codes[name] = _resized(self._codes[name], capacity, NONE_CODE)
        self._captured = _resized(self._captured, capacity, np.nan)
        self._present = _resized(self._present, capacity, False)
        self._size = size

    def select(self, f: SearchFilter) -> Selection:
        """The selection of the ids ``f`` keeps among the rows caught up so far (the same filter over the same rows
        is served from a small cache: a camera over 1M ids costs ~1.5 ms to build, and filters repeat)."""
        key = (f, self._last_id)
        if (hit := self._cache.get(key)) is not None:
            return hit
        selection = self._select(f)
        with self._lock:
            if len(self._cache) >= CACHED_SELECTIONS:
                self._cache.pop(next(iter(self._cache)))  # the oldest (dicts keep insertion order)
            self._cache[key] = selection
        return selection

    def _select(self, f: SearchFilter) -> Selection:
        with self._lock:
            n = self._size
            mask = self._present[:n].copy()
            self._keep(mask, "camera", f.cameras, n, keep=True)
            self._keep(mask, "camera", f.exclude_cameras, n, keep=False)
            self._keep(mask, "person", f.person_ids, n, keep=True)
            self._keep(mask, "track", getattr(f, "track_ids", None), n, keep=True)
            if f.time_from is not None or f.time_to is not None:
                t = self._captured[:n]
                with np.errstate(invalid="ignore"):  # NaN (no capture time) fails any window
                    mask &= (t >= (-math.inf if f.time_from is None else f.time_from)) & (
                        t <= (math.inf if f.time_to is None else f.time_to)
                    )
            covered = self._rows
        kept = int(mask.sum())
        bitmap = np.packbits(mask, bitorder="little")  # faiss reads bit (id & 7) of byte (id >> 3)
        sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
        return Selection(sel, bitmap, kept, kept / covered if covered else 0.0)

    def _keep(self, mask: np.ndarray, column: str, values, n: int, *, keep: bool) -> None:
        if values is None:
            return
        vocab = self._vocab[column]
        codes = [vocab[v] for v in values if v in vocab]
        col = self._codes[column][:n]
        if len(codes) <= FEW_CODES:  # one comparison each: np.isin sorts, 10x slower for one camera of 16
            hit = np.zeros(n, dtype=bool)
            for code in codes:
                hit |= col == code
        else:
            hit = np.isin(col, codes)
        mask &= hit if keep else ~hit


def _resized(a: np.ndarray, capacity: int, fill) -> np.ndarray:
    out = np.full(capacity, fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def _as_time(value) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan  # None, or a value an older version stored that reads as no time (index/store.py)


def search(
    index, xq: np.ndarray, k: int, threads: int, nprobe: int | None, selection: Selection | None, boost: int = 1
):
    """D, I of ``index`` kept to ``selection`` (None: every id), nprobe scaled to the fraction it keeps."""
    if selection is None:
        return faiss_index.search(index, xq, k, threads, nprobe=nprobe)
    if isinstance(index, faiss.IndexIVF):
        nprobe = scaled_nprobe(nprobe or index.nprobe, selection.fraction, index.nlist, boost)
    return faiss_index.search(index, xq, k, threads, sel=selection.sel, nprobe=nprobe)


def scaled_nprobe(nprobe: int, fraction: float, nlist: int, boost: int = 1) -> int:
    """nprobe for a filter keeping ``fraction`` of the gallery: as many lists as hold, on average, the candidates
    ``nprobe`` lists hold unfiltered, times ``boost`` (a filter's top k lies deeper in the neighbour ranking, so
    farther from the query: index.growth measures the boost that keeps recall). Skipping the ids a filter leaves
    out costs a bitmap lookup each, so even all lists at 1 % stays cheap."""
    if fraction <= 0:
        return 1
    return int(min(nlist, max(nprobe, math.ceil(nprobe * boost / fraction))))


def bitmap_selection(mask: np.ndarray) -> Selection:
    """A selection from a boolean mask indexed by id (index.growth measures filtered recall with one)."""
    bitmap = np.packbits(mask, bitorder="little")
    kept = int(mask.sum())
    return Selection(faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)), bitmap, kept, kept / max(1, len(mask)))
