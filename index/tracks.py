"""Tracks and identities in the embedded store: tables beside the items in the SQLite log (index.track_records).

    tracks        seq (paging order), track_id (unique), camera_id, first_seen, last_seen, n_items, best_item_id,
                  best_quality, the running feature (wsum, xsum: float64 blobs; weight), identity_id
    track_items   item_id -> track_id, quality: which tracks a removal touches, whose items a recount reads

The tables are a view of the items kept by a watermark, as the faiss snapshot is: ``tracks.last_id`` (the last
item id taken in) and ``tracks.last_seq`` (the last removal applied) in the log's ``meta``. After every write the
gallery calls ``_tracks_catch_up`` under its write mutex: items above the watermark are added to their tracks'
running sums, removals after it drop their items and recount the tracks they touched from the items left (a track
whose last item goes is dropped, identity and all). The tables and the watermark commit in one transaction, so a
crash between an add's commit and the catch-up is caught up on the next open: the tables never disagree with the
log for longer than a write. Identity numbers come from ``tracks.next_identity`` and are never reused.

A read-only gallery serves the tables as the writer last left them; a log from before tracks has none until a
writer opens it (then every item with a track_id is taken in).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from index import metadata
from index.errors import CorruptGallery
from index.track_records import IdentitySummary, Track, TrackQuery, feature, item_quality, summarise, timeline_order

if TYPE_CHECKING:
    from index.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    track_id TEXT NOT NULL UNIQUE,
    camera_id TEXT,
    first_seen REAL,
    last_seen REAL,
    n_items INTEGER NOT NULL,
    best_item_id INTEGER NOT NULL,
    best_quality REAL NOT NULL,
    weight REAL NOT NULL,
    wsum BLOB NOT NULL,
    xsum BLOB NOT NULL,
    identity_id INTEGER
);
CREATE INDEX IF NOT EXISTS tracks_identity ON tracks (identity_id);
CREATE TABLE IF NOT EXISTS track_items (item_id INTEGER PRIMARY KEY, track_id TEXT NOT NULL, quality REAL NOT NULL);
CREATE INDEX IF NOT EXISTS track_items_track ON track_items (track_id);
"""
log = logging.getLogger(__name__)

LAST_ID, LAST_SEQ, NEXT_IDENTITY = "tracks.last_id", "tracks.last_seq", "tracks.next_identity"
TRACK_COLUMNS = "seq, track_id, camera_id, first_seen, last_seen, n_items, best_item_id, identity_id"
SQL_VARS = 900


def _track(row) -> Track:
    seq, tid, cam, first, last, n, best, ident = row
    return Track(tid, cam, first, last, int(n), int(best), None if ident is None else int(ident), int(seq))


def _vector(blob: bytes, crc: int, rid: int, dim: int) -> np.ndarray:
    if zlib.crc32(blob) != crc or len(blob) != dim * 4:
        raise CorruptGallery(f"the vector of id {rid} is corrupt (crc32)")
    return np.frombuffer(blob, dtype=np.float32).astype(np.float64)


def _chunks(items: list, size: int = SQL_VARS) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Sums:
    """One track's summary while a catch-up changes it."""

    def __init__(self, dim: int, row=None):
        if row is None:
            self.camera: str | None = None
            self.first: float | None = None
            self.last: float | None = None
            self.best: int | None = None
            self.n, self.weight, self.best_q = 0, 0.0, -1.0
            self.wsum, self.xsum = np.zeros(dim), np.zeros(dim)
        else:
            self.camera, self.first, self.last, self.n, self.best, self.best_q, self.weight, wsum, xsum = row
            self.wsum, self.xsum = np.frombuffer(wsum, np.float64).copy(), np.frombuffer(xsum, np.float64).copy()

    def add(self, rid: int, camera, captured, x: np.ndarray, q: float) -> None:
        if self.camera is None:
            self.camera = camera
        if captured is not None:
            self.first = captured if self.first is None else min(self.first, captured)
            self.last = captured if self.last is None else max(self.last, captured)
        if q > self.best_q or (q == self.best_q and (self.best is None or rid < self.best)):
            self.best, self.best_q = rid, q
        self.n += 1
        self.weight += q
        self.wsum += q * x
        self.xsum += x

    def values(self) -> tuple:
        return (self.camera, self.first, self.last, self.n, self.best, self.best_q, self.weight,
                self.wsum.tobytes(), self.xsum.tobytes())  # fmt: skip


class TrackTables:
    """The embedded gallery's track methods (a mixin of index.gallery.Gallery: ``_store``, ``_write_mutex``,
    ``dim``, ``readonly``, ``_check_open`` and ``_check_writable`` are the gallery's)."""

    _tracks_mark: tuple[int, int] | None = None  # (last item id, last removal seq) the tables have taken in

    if TYPE_CHECKING:  # the gallery's state and methods these use, declared for the type checker
        readonly: bool
        _store: Store
        _write_mutex: threading.Lock

        @property
        def dim(self) -> int: ...
        def _check_open(self) -> None: ...
        def _check_writable(self) -> None: ...

    # -- keeping the tables up to date (caller holds the write mutex) ------------------------------------------

    def _tracks_after_write(self) -> None:
        """Catch the tables up after a write the log has committed: a failure here must not fail that write (it is
        acknowledged), so it is logged and the next write or open catches up."""
        try:
            self._tracks_catch_up()
        except Exception:
            log.exception("tracks: catching up with the log failed; retried on the next write or open")

    def _tracks_catch_up(self) -> None:
        if self.readonly:
            return
        conn = self._store.writer
        if self._tracks_mark is None:
            conn.executescript(SCHEMA)
            setting = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'tracks.%'").fetchall())
            self._tracks_mark = (int(setting.get(LAST_ID, 0)), int(setting.get(LAST_SEQ, 0)))
        last_id, last_seq = self._tracks_mark
        top_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0]
        top_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM removals").fetchone()[0]
        gone = [r[0] for r in conn.execute("SELECT id FROM removals WHERE seq > ?", (last_seq,))]
        tracked = conn.execute("SELECT 1 FROM items WHERE id > ? AND track_id IS NOT NULL LIMIT 1", (last_id,))
        if tracked.fetchone() is None and not self._tracked(conn, gone):
            # Nothing for the tables: the watermark moves in memory only (rows without a track are skipped again
            # by the next open's catch-up, at the cost of a range scan), and the write pays no second commit.
            self._tracks_mark = (max(top_id, last_id), max(top_seq, last_seq))
            return
        # A derived view: its commit need not reach the disk before the write returns (a lost one is caught up
        # from the log on open, the watermark with it), so it costs no second fsync; the next FULL commit syncs it.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if top_id > last_id:
                self._tracks_take_in(conn, last_id)
            if gone:
                self._tracks_drop(conn, gone)
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(LAST_ID, str(max(top_id, last_id))), (LAST_SEQ, str(max(top_seq, last_seq)))],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("PRAGMA synchronous = FULL")
        self._tracks_mark = (max(top_id, last_id), max(top_seq, last_seq))

    @staticmethod
    def _tracked(conn: sqlite3.Connection, item_ids: list[int]) -> bool:
        for chunk in _chunks(item_ids):
            marks = ",".join("?" * len(chunk))
            if conn.execute(f"SELECT 1 FROM track_items WHERE item_id IN ({marks}) LIMIT 1", chunk).fetchone():
                return True
        return False

    def _tracks_take_in(self, conn: sqlite3.Connection, after_id: int) -> None:
        cursor = conn.execute(
            "SELECT id, track_id, camera_id, captured_at, CAST(metadata AS BLOB), vector, vector_crc FROM items"
            " WHERE id > ? AND track_id IS NOT NULL ORDER BY id",
            (after_id,),
        )
        sums: dict[str, _Sums] = {}
        members = []
        while rows := cursor.fetchmany(4096):
            for rid, tid, cam, captured, meta_blob, blob, crc in rows:
                if tid not in sums:
                    sums[tid] = _Sums(self.dim, self._tracks_row(conn, tid))
                q = item_quality(metadata.decode(meta_blob)[0])
                sums[tid].add(rid, cam, captured, _vector(blob, crc, rid, self.dim), q)
                members.append((rid, tid, q))
        conn.executemany("INSERT OR REPLACE INTO track_items (item_id, track_id, quality) VALUES (?, ?, ?)", members)
        self._tracks_write(conn, sums)

    @staticmethod
    def _tracks_row(conn: sqlite3.Connection, tid: str):
        return conn.execute(
            "SELECT camera_id, first_seen, last_seen, n_items, best_item_id, best_quality, weight, wsum, xsum"
            " FROM tracks WHERE track_id = ?",
            (tid,),
        ).fetchone()

    @staticmethod
    def _tracks_write(conn: sqlite3.Connection, sums: Mapping[str, _Sums]) -> None:
        conn.executemany(
            "INSERT INTO tracks (track_id, camera_id, first_seen, last_seen, n_items, best_item_id, best_quality,"
            " weight, wsum, xsum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (track_id) DO UPDATE SET"
            " camera_id = excluded.camera_id, first_seen = excluded.first_seen, last_seen = excluded.last_seen,"
            " n_items = excluded.n_items, best_item_id = excluded.best_item_id, best_quality = excluded.best_quality,"
            " weight = excluded.weight, wsum = excluded.wsum, xsum = excluded.xsum",
            [(tid, *s.values()) for tid, s in sums.items()],
        )

    def _tracks_drop(self, conn: sqlite3.Connection, item_ids: list[int]) -> None:
        """Drop removed items from their tracks and recount those tracks from the items left."""
        touched: set[str] = set()
        for chunk in _chunks(sorted(set(item_ids))):
            marks = ",".join("?" * len(chunk))
            touched.update(
                r[0] for r in conn.execute(f"SELECT track_id FROM track_items WHERE item_id IN ({marks})", chunk)
            )
            conn.execute(f"DELETE FROM track_items WHERE item_id IN ({marks})", chunk)
        sums: dict[str, _Sums] = {}
        for tid in sorted(touched):
            rows = conn.execute(
                "SELECT i.id, i.camera_id, i.captured_at, i.vector, i.vector_crc, t.quality FROM track_items t"
                " JOIN items i ON i.id = t.item_id WHERE t.track_id = ? ORDER BY i.id",
                (tid,),
            ).fetchall()
            if not rows:  # its last item went: the track goes, and with it the track's identity
                conn.execute("DELETE FROM tracks WHERE track_id = ?", (tid,))
                continue
            s = sums[tid] = _Sums(self.dim)
            for rid, cam, captured, blob, crc, q in rows:
                s.add(rid, cam, captured, _vector(blob, crc, rid, self.dim), q)
        self._tracks_write(conn, sums)

    # -- identities (writes) -----------------------------------------------------------------------------------

    def reserve_identities(self, n: int) -> list[int]:
        """``n`` identity numbers never given out before (durable once this returns)."""
        self._check_writable()
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._write_mutex:
            conn = self._store.writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (NEXT_IDENTITY,)).fetchone()
                start = int(row[0]) if row else 1
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (NEXT_IDENTITY, str(start + n)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return list(range(start, start + n))

    def set_identities(self, assignments: Mapping[str, int | None]) -> int:
        """Set each track's identity (None clears it); tracks the gallery no longer holds are left out (an erased
        track is never brought back). Numbers must come from ``reserve_identities``. Returns the tracks set."""
        self._check_writable()
        with self._write_mutex:
            self._tracks_catch_up()
            conn = self._store.writer
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (NEXT_IDENTITY,)).fetchone()
            limit = int(row[0]) if row else 1
            bad = [i for i in assignments.values() if i is not None and not 1 <= int(i) < limit]
            if bad:
                raise ValueError(f"identity numbers {sorted(set(bad))[:5]} were not reserved (reserve_identities)")
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                for tid, ident in assignments.items():
                    cur = conn.execute(
                        "UPDATE tracks SET identity_id = ? WHERE track_id = ?",
                        (None if ident is None else int(ident), str(tid)),
                    )
                    changed += cur.rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return changed

    # -- reads -------------------------------------------------------------------------------------------------

    def _tracks_conn(self) -> sqlite3.Connection | None:
        self._check_open()
        conn = self._store.reader()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tracks'").fetchone() is None:
            return None  # a log from before tracks, opened read-only
        return conn

    @staticmethod
    def _where(query: TrackQuery | None) -> tuple[str, list]:
        terms: list[str] = []
        args: list[object] = []
        if query is not None:
            if query.camera_id is not None:
                terms.append("camera_id = ?")
                args.append(query.camera_id)
            if query.identity_id is not None:
                terms.append("identity_id = ?")
                args.append(int(query.identity_id))
            if query.time_from is not None:
                terms.append("last_seen >= ?")
                args.append(float(query.time_from))
            if query.time_to is not None:
                terms.append("first_seen <= ?")
                args.append(float(query.time_to))
        return " AND ".join(terms) or "1", args

    def tracks(self, query: TrackQuery | None = None, *, after: int = 0, limit: int = 100) -> list[Track]:
        """Tracks that pass ``query`` with seq > ``after``, in seq order, at most ``limit``."""
        conn = self._tracks_conn()
        if conn is None:
            return []
        where, args = self._where(query)
        sql = f"SELECT {TRACK_COLUMNS} FROM tracks WHERE seq > ? AND {where} ORDER BY seq LIMIT ?"
        return [_track(r) for r in conn.execute(sql, [int(after), *args, int(limit)])]

    def tracks_of(self, track_ids: Sequence[str]) -> dict[str, Track]:
        conn = self._tracks_conn()
        out: dict[str, Track] = {}
        if conn is None:
            return out
        for chunk in _chunks(list(dict.fromkeys(str(t) for t in track_ids))):
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(f"SELECT {TRACK_COLUMNS} FROM tracks WHERE track_id IN ({marks})", chunk):
                out[r[1]] = _track(r)
        return out

    def track_items(self, track_id: str) -> list[int]:
        """The ids of a track's items, in id order (empty for a track the gallery does not hold)."""
        conn = self._tracks_conn()
        if conn is None:
            return []
        rows = conn.execute("SELECT item_id FROM track_items WHERE track_id = ? ORDER BY item_id", (str(track_id),))
        return [r[0] for r in rows]

    def track_vectors(self) -> tuple[list[Track], np.ndarray]:
        """Every track with its feature (T, D) float32, in seq order: what linking reads."""
        conn = self._tracks_conn()
        if conn is None:
            return [], np.zeros((0, self.dim), np.float32)
        rows = conn.execute(f"SELECT {TRACK_COLUMNS}, wsum, xsum, weight FROM tracks ORDER BY seq").fetchall()
        xb = [feature(np.frombuffer(r[8], np.float64), np.frombuffer(r[9], np.float64), r[10]) for r in rows]
        return [_track(r[:8]) for r in rows], np.asarray(xb, np.float32).reshape(len(rows), self.dim)

    def identities(self, query: TrackQuery | None = None, *, after: int = 0, limit: int = 100) -> list[IdentitySummary]:
        """Identities > ``after`` with a track that passes ``query``, in identity order, at most ``limit``; each
        summarised over all its tracks."""
        conn = self._tracks_conn()
        if conn is None:
            return []
        where, args = self._where(query)
        ids = [
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT identity_id FROM tracks WHERE identity_id > ? AND {where} ORDER BY identity_id LIMIT ?",
                [int(after), *args, int(limit)],
            )
        ]
        tracks = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            tracks += [
                _track(r)
                for r in conn.execute(f"SELECT {TRACK_COLUMNS} FROM tracks WHERE identity_id IN ({marks})", chunk)
            ]
        return summarise(tracks)

    def identity_tracks(self, identity_id: int) -> list[Track]:
        """An identity's tracks in time order (its timeline); empty when no track carries it."""
        return timeline_order(self.tracks(TrackQuery(identity_id=int(identity_id)), limit=-1))
