"""An index that grows with the gallery (factory "auto"): exact Flat while the gallery is small, then IVF with an
8-bit scalar-quantised code (SQ8: 512 + 8 bytes per 512-d item in memory instead of 2048 + 8) whose shortlist is
re-ranked exactly with the float vectors of the SQLite log (on disk, read through the page cache: they never sit in
the process's heap). Picked again, off the write path, as the gallery grows or shrinks past the policy's bounds.

A build runs on its own thread: it reads the log in one read transaction (a consistent view at one log position),
trains on a random sample, adds every vector, measures recall@10 of held-out items of its own against exact search
(streamed over the same pass) and picks the smallest nprobe that reaches the target. It then takes the gallery's
write mutex for the rows written meanwhile (few) and swaps the index in under the index lock (a pointer swap):
searches keep running on the old index throughout, writes wait only for the catch-up and the snapshot.

What it chose (factory, when, items, training size, measured recall, nprobe, build time) is kept in the manifest
(``index_choice``) and shown in the gallery's stats.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np

from index import faiss_index, filters_faiss
from index.snapshot import SnapshotError, read_manifest

log = logging.getLogger(__name__)

K = 10  # recall@K is what the policy measures and targets
NPROBES = (4, 8, 16, 32, 64, 128, 256)  # tried in order until the held-out recall reaches the target
BOOSTS = (1, 2, 4, 8, 16)  # filtered nprobe multiples (filters_faiss.scaled_nprobe), tried in order likewise
FILTER_KEEPS = 16  # the filtered recall is measured with a pseudo-random 1/16 of the ids (a camera of 16)


@dataclass(frozen=True)
class Policy:
    """When to serve what. ``auto:flat_max=2000,regrow=4`` in the factory string overrides the defaults."""

    flat_max: int = 50_000  # exact below this many items (Flat 50k x 512: ~2.5 ms a query on one core)
    regrow: float = 4.0  # build again when the items are this many times (or 1/this) the last build's
    lists_per_sqrt: float = 2.0  # nlist ~ this x sqrt(items), a power of two
    max_nlist: int = 4096  # k-means on 2 cores: 4096 lists x 512-d train in minutes, 16384 would take an hour
    train_per_list: int = 50  # training sample per list (faiss warns below 39)
    rerank: int = 4  # shortlist = rerank x k from the compressed codes, re-scored exactly
    target_recall: float = 0.95
    holdout: int = 200  # items of the gallery's own used as queries to measure recall

    @classmethod
    def parse(cls, factory: str) -> Policy:
        if factory == "auto":
            return cls()
        names = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for part in factory.removeprefix("auto:").split(","):
            key, _, text = part.partition("=")
            if key not in names:
                raise ValueError(f"factory {factory!r}: unknown setting {key!r} (known: {', '.join(names)})")
            values[key] = float(text) if names[key] == "float" else int(float(text))
        return cls(**values)

    def choose(self, n: int) -> str:
        """The factory for a gallery of ``n`` items."""
        if n < self.flat_max:
            return "Flat"
        nlist = min(
            2 ** round(math.log2(self.lists_per_sqrt * math.sqrt(n))),
            2 ** math.floor(math.log2(max(1.0, n / self.train_per_list))),  # enough items to train every list
            self.max_nlist,
        )
        return f"IVF{nlist},SQ8"

    def due(self, n: int, serving: str, built_at: int) -> bool:
        """Whether a gallery of ``n`` items serving ``serving`` (built at ``built_at`` items) needs another build."""
        if serving == "Flat":
            return n >= self.flat_max
        if n < self.flat_max / self.regrow:
            return True  # shrunk well below the switch point: exact again
        grown = n >= self.regrow * built_at or n * self.regrow <= built_at
        return grown and self.choose(n) != serving


@dataclass
class Choice:
    """What the policy built and what it measured (the manifest's ``index_choice``)."""

    factory: str = "Flat"
    chosen_at: str = ""
    items: int = 0  # items in the gallery when it was built
    train_size: int = 0
    recall_at_10: float | None = None  # measured on held-out items of the gallery's own, vs exact search
    recall_queries: int = 0
    nprobe: int | None = None
    filter_recall_at_10: float | None = None  # the same, within a pseudo-random 1/16 of the items
    filter_boost: int = 1  # filtered searches probe nprobe x this / the fraction kept (filters_faiss)
    rerank: int = 0  # shortlist multiple re-ranked exactly (0: none, the index is exact)
    build_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Choice:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Grower:
    """The "auto" policy of one embedded gallery (index.gallery.Gallery, whose state it reads and swaps under
    the gallery's own locks: _store, _rw, _write_mutex, _index, _install, _write_snapshot)."""

    def __init__(self, gallery, policy: Policy):
        self.gallery = gallery
        self.policy = policy
        self.choice = Choice()
        self._restored = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failed: str | None = None

    # -- hooks the gallery calls ------------------------------------------------------------------------------

    def after_write(self) -> None:
        """Called with the write mutex held after every write: start a build if one is due and none runs."""
        g = self.gallery
        self._restore()
        if g.readonly or self.building or self._stop.is_set():
            return
        serving = self.serving()
        built_at = self.choice.items if self.choice.factory == serving else 0
        if self.policy.due(len(g), serving, built_at):
            self._thread = threading.Thread(target=self._run, name="gallery-growth", daemon=True)
            self._thread.start()

    def search(self, index, xq: np.ndarray, k: int, selection: filters_faiss.Selection | None):
        """D, I of the served index for k hits, the shortlist re-ranked exactly when the index is compressed."""
        g = self.gallery
        nprobe = g.nprobe or self.choice.nprobe
        compressed = isinstance(index, faiss.IndexIVFScalarQuantizer)
        shortlist = k * self.policy.rerank if compressed else k
        boost = self.choice.filter_boost
        D, I = filters_faiss.search(index, xq, shortlist, g.threads, nprobe, selection, boost)  # noqa: E741, N806
        if not compressed:
            return D, I
        return rerank(xq, I, k, lambda ids: g._store.vectors_of(ids, g.dim))

    def stats(self) -> dict:
        self._restore()
        serving = self.serving()
        choice = asdict(self.choice) if self.choice.factory == serving else asdict(Choice(factory=serving))
        choice.pop("extra", None)
        return {
            **choice,
            "policy": asdict(self.policy),
            "building": self.building,
            "last_error": self._failed,
        }

    def manifest_entry(self) -> dict:
        return asdict(self.choice) if self.choice.factory == self.serving() else {}

    def close(self) -> None:
        """Stop a build in progress (it is simply dropped: the next open starts it again if still due)."""
        self._stop.set()
        self.wait()

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def building(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def serving(self) -> str:
        g = self.gallery
        with g._rw.read():
            return faiss_index.describe(g._index)

    def _restore(self) -> None:
        """The choice recorded in the manifest of the snapshot the gallery opened (once)."""
        if self._restored:
            return
        self._restored = True
        try:
            self.choice = Choice.from_dict(getattr(read_manifest(self.gallery.path), "index_choice", {}) or {})
        except (SnapshotError, TypeError):
            self.choice = Choice()

    # -- the build (its own thread) -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            built = self._build()
            if built is not None:
                self._swap(*built)
        except Exception as exc:  # noqa: BLE001 (a failed build leaves the old index serving; stats say why)
            self._failed = f"{type(exc).__name__}: {exc}"
            log.exception("gallery %s: index build failed; the current index keeps serving", self.gallery.path)

    def _build(self):
        """(index, choice, log position it covers) built from one read view of the log; None if stopped."""
        g, store = self.gallery, self.gallery._store
        started = time.perf_counter()
        with store.view() as conn:
            last_id, last_seq = store.log_position(conn)
            n = store.count(conn)
            kind = faiss_index.parse_factory(self.policy.choose(n), g.dim)
            choice = Choice(kind.factory, datetime.now(UTC).isoformat(timespec="seconds"), n)
            if not kind.needs_training:
                index = faiss_index.exact_index(g.dim)
                for ids, xb in store.vectors_after(conn, 0, g.dim):
                    index.add_with_ids(xb, ids)
                choice.recall_at_10 = 1.0  # exact
            else:
                xq, xt = self._sample(conn, last_id, kind.nlist * self.policy.train_per_list)
                index = faiss_index.empty_index(kind, g.dim)
                index.train(xt)
                truth = self._fill(conn, index, xq)
                if truth is None:
                    return None
                choice.train_size, choice.rerank, choice.recall_queries = len(xt), self.policy.rerank, len(xq)
                choice.nprobe, choice.recall_at_10 = self._tune(index, xq, truth[0], conn)
                choice.filter_boost, choice.filter_recall_at_10 = self._tune_filtered(
                    index, xq, truth[1], truth[0][:, 0], conn, choice.nprobe, last_id
                )
        choice.build_seconds = round(time.perf_counter() - started, 2)
        return index, choice, last_id, last_seq

    def _sample(self, conn, last_id: int, train: int) -> tuple[np.ndarray, np.ndarray]:
        """(held-out queries, training sample): random live items of the log, disjoint."""
        g = self.gallery
        rng = np.random.default_rng(last_id)
        wanted = min(last_id, int(1.2 * train) + 2 * self.policy.holdout)  # removed ids are not found
        _, xs = g._store.vectors_of((rng.choice(last_id, size=wanted, replace=False) + 1).tolist(), g.dim, conn)
        xs = xs[rng.permutation(len(xs))]
        return xs[: self.policy.holdout], xs[self.policy.holdout :][:train]

    def _fill(self, conn, index, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Add every live vector of the view to ``index``; returns the exact top K+1 ids of ``xq`` over the same
        pass (the queries are items of the gallery: each finds itself first), and the same within the ids of
        ``kept_ids``; None if stopped."""
        truth = [faiss.ResultHeap(len(xq), K + 1, keep_max=True) for _ in range(2)]
        for ids, xb in self.gallery._store.vectors_after(conn, 0, self.gallery.dim):
            if self._stop.is_set():
                return None
            index.add_with_ids(xb, ids)
            scores = xq @ xb.T
            keep = kept_ids(ids)
            for heap, cols in ((truth[0], slice(None)), (truth[1], keep)):
                chosen = ids[cols]
                heap.add_result(np.ascontiguousarray(scores[:, cols]), np.tile(chosen, (len(xq), 1)))
        for heap in truth:
            heap.finalize()
        return truth[0].I, truth[1].I

    def _tune_filtered(self, index, xq, truth_ids, own, conn, nprobe: int, last_id: int) -> tuple[int, float]:
        """The smallest boost whose filtered, re-ranked recall@K within kept_ids reaches the target (or the best)."""
        g = self.gallery
        mask = np.zeros(last_id + 1, dtype=bool)
        mask[kept_ids(np.arange(last_id + 1, dtype=np.int64))] = True
        selection = filters_faiss.bitmap_selection(mask)
        best = (BOOSTS[0], 0.0)
        for boost in BOOSTS:
            _, shortlist = filters_faiss.search(index, xq, K * self.policy.rerank, g.threads, nprobe, selection, boost)
            _, found = rerank(xq, shortlist, K + 1, lambda ids: g._store.vectors_of(ids, g.dim, conn))
            recall = recall_at(found, truth_ids, K, own)
            if recall > best[1]:
                best = (boost, recall)
            if recall >= self.policy.target_recall:
                break
        return best[0], round(best[1], 4)

    def _tune(self, index, xq: np.ndarray, truth_ids: np.ndarray, conn) -> tuple[int, float]:
        """The smallest nprobe whose re-ranked recall@K on the held-out queries reaches the target (or the best)."""
        g = self.gallery
        best = (NPROBES[0], 0.0)
        for nprobe in NPROBES:
            if nprobe > index.nlist:
                break
            _, shortlist = faiss_index.search(index, xq, K * self.policy.rerank, g.threads, nprobe=nprobe)
            _, found = rerank(xq, shortlist, K + 1, lambda ids: g._store.vectors_of(ids, g.dim, conn))
            recall = recall_at(found, truth_ids, K, truth_ids[:, 0])
            if recall > best[1]:
                best = (nprobe, recall)
            if recall >= self.policy.target_recall:
                break
        return best[0], round(best[1], 4)

    def _swap(self, index, choice: Choice, last_id: int, last_seq: int) -> None:
        """Bring the new index up to the log (under the write mutex) and swap it in."""
        g, store = self.gallery, self.gallery._store
        with g._write_mutex:
            if self._stop.is_set() or g._closed:
                return
            with store.view() as conn:
                removed = [i for i in store.removals_after(conn, last_seq) if i <= last_id]
                if removed:
                    index.remove_ids(np.asarray(removed, dtype=np.int64))
                for ids, xb in store.vectors_after(conn, last_id, g.dim):
                    index.add_with_ids(xb, ids)
                new_id, new_seq = store.log_position(conn)
            g._install(index, True, new_id, new_seq)
            self.choice = replace(choice, extra={"caught_up_rows": int(index.ntotal) - choice.items})
            g._dirty += 1
            g._write_snapshot()
        release_freed_memory()
        log.info("gallery %s now serves %s (recall@10 %s)", g.path, choice.factory, choice.recall_at_10)


def release_freed_memory() -> None:
    """Hand the old index's freed memory back to the OS (glibc keeps freed blocks in its arenas: measured at 1M,
    the writer's RSS stayed ~0.8 KB an item above what it serves after the builds). A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rerank(xq: np.ndarray, shortlist: np.ndarray, k: int, vectors_of) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query's shortlist by exact inner product with the stored float vectors (-1 padded).
    ``vectors_of(ids) -> (ids, xb)``; ids it does not return (removed since) drop out."""
    ids, xb = vectors_of(np.unique(shortlist[shortlist >= 0]).tolist())
    row = {int(i): r for r, i in enumerate(ids)}
    D = np.full((len(xq), k), -np.inf, dtype=np.float32)  # noqa: N806
    I = np.full((len(xq), k), -1, dtype=np.int64)  # noqa: E741, N806
    for q in range(len(xq)):
        cand = np.array([i for i in shortlist[q] if int(i) in row], dtype=np.int64)
        if not len(cand):
            continue
        # Elementwise, not BLAS: a 40 x 512 product is too small to gain from BLAS threads, and waking them on a
        # busy host cost ~5 ms a query here.
        scores = (xb[[row[int(i)] for i in cand]] * xq[q]).sum(axis=1)
        top = np.argsort(-scores, kind="stable")[:k]
        D[q, : len(top)], I[q, : len(top)] = scores[top], cand[top]
    return D, I


def kept_ids(ids: np.ndarray) -> np.ndarray:
    """Positions of the ids a pseudo-random filter keeps (1 in FILTER_KEEPS; a multiplicative hash, so unrelated
    to the order, camera or time items came in)."""
    return np.nonzero(((ids.astype(np.uint64) * np.uint64(2654435761)) >> np.uint64(7)) % FILTER_KEEPS == 0)[0]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int, own: np.ndarray) -> float:
    """Mean recall@k of ``found`` against ``truth`` per row, each row's query's own id (``own``: the queries are
    the gallery's own items, the top of an unfiltered exact search) left out of both."""
    scores = []
    for f, t, me in zip(found, truth, own, strict=True):
        want = [i for i in t if i != me and i >= 0][:k]
        got = [i for i in f if i != me and i >= 0][:k]
        scores.append(len(set(want) & set(got)) / max(1, len(want)))
    return float(np.mean(scores)) if scores else 0.0
