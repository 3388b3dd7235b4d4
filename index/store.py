"""The log of record: vectors and their metadata in SQLite (WAL, synchronous=FULL).

An add is acknowledged only after its transaction commits, so it survives kill -9 whatever happens to the
faiss snapshot. Ids come from AUTOINCREMENT and are never reused. A remove deletes the row and appends
the id to ``removals`` so that a snapshot older than the remove can be caught up.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index.errors import CorruptGallery
from index.records import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id TEXT,
    camera_id TEXT,
    captured_at REAL,
    track_id TEXT,
    source TEXT,
    content_hash TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    added_at REAL NOT NULL,
    vector BLOB NOT NULL,
    vector_crc INTEGER NOT NULL  -- crc32 of the blob: SQLite checks pages and structure, not payload bytes
);
CREATE INDEX IF NOT EXISTS items_content_hash ON items (content_hash);
CREATE TABLE IF NOT EXISTS removals (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL);
"""
RECORD_COLUMNS = "id, person_id, camera_id, captured_at, track_id, source, content_hash, metadata, added_at"
SQL_VARS = 900  # below SQLite's default limit on host parameters per statement
FETCH_ROWS = 4096


def _row_to_record(row) -> Record:
    rid, person, camera, captured, track, source, chash, meta, added = row
    return Record(person, camera, captured, track, source, chash, json.loads(meta), id=rid, added_at=added)


def _opt_str(value) -> str | None:
    return None if value is None else str(value)


class Store:
    """SQLite access: one writer connection (used under the gallery's write mutex) and one reader per thread."""

    def __init__(self, path: Path, readonly: bool):
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None

    # -- connections ---------------------------------------------------------------------------------------

    def _connect(self, check_same_thread: bool) -> sqlite3.Connection:
        try:
            if self.readonly:
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=check_same_thread
                )
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=check_same_thread)
            conn.execute("PRAGMA busy_timeout = 10000")
        except sqlite3.DatabaseError as exc:
            raise CorruptGallery(f"cannot open the gallery database {self.path}: {exc}") from exc
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Used by this thread only, but close() may run on another one.
            conn = self._local.conn = self._connect(check_same_thread=False)
        return conn

    @property
    def writer(self) -> sqlite3.Connection:
        if self.readonly:
            raise RuntimeError("the gallery is open read-only")
        if self._writer is None:
            self._writer = self._connect(check_same_thread=False)
            self._writer.execute("PRAGMA journal_mode = WAL")
            self._writer.execute("PRAGMA synchronous = FULL")  # a commit is on disk before add() returns
        return self._writer

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._writer = None
        self._local = threading.local()

    # -- schema and settings -------------------------------------------------------------------------------

    def initialise(self, settings: dict[str, str]) -> None:
        conn = self.writer
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", settings.items())
        conn.execute("COMMIT")

    def set_setting(self, key: str, value: str) -> None:
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        conn.execute("COMMIT")

    def check(self) -> dict[str, str]:
        """Integrity check (pages and structure) and the settings; CorruptGallery if either fails."""
        conn = self.reader()
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                raise CorruptGallery(f"gallery database {self.path} failed its integrity check: {rows[:3]}")
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise CorruptGallery(f"gallery database {self.path} is corrupt: {exc}") from exc

    # -- writes (caller holds the gallery's write mutex) -------------------------------------------------------

    def insert(self, xb: np.ndarray, records: Sequence[Record]) -> list[int]:
        now = time.time()
        rows = [
            (
                _opt_str(r.person_id),
                _opt_str(r.camera_id),
                None if r.captured_at is None else float(r.captured_at),
                _opt_str(r.track_id),
                _opt_str(r.source),
                r.content_hash,
                json.dumps(r.metadata or {}, sort_keys=True),
                now,
                x.tobytes(),
                zlib.crc32(x.tobytes()),
            )
            for x, r in zip(xb, records, strict=True)
        ]
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [
                conn.execute(
                    "INSERT INTO items (person_id, camera_id, captured_at, track_id, source, content_hash,"
                    " metadata, added_at, vector, vector_crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                ).lastrowid
                for row in rows
            ]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return ids

    def delete(self, ids: Sequence[int]) -> tuple[list[int], int]:
        """Delete the rows that exist; returns (deleted ids, last removal seq)."""
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            present = []
            for chunk in _chunks(list(ids), SQL_VARS):
                marks = ",".join("?" * len(chunk))
                present += [r[0] for r in conn.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)]
            for chunk in _chunks(present, SQL_VARS):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
            conn.executemany("INSERT INTO removals (id) VALUES (?)", [(i,) for i in present])
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM removals").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return present, seq

    # -- reads ---------------------------------------------------------------------------------------------

    @contextmanager
    def view(self) -> Iterator[sqlite3.Connection]:
        """This thread's reader inside one read transaction: a consistent view of the log while it lasts."""
        conn = self.reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def count(self, conn: sqlite3.Connection | None = None) -> int:
        return (conn or self.reader()).execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def setting(self, conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get(self, rid: int) -> Record | None:
        row = self.reader().execute(f"SELECT {RECORD_COLUMNS} FROM items WHERE id = ?", (rid,)).fetchone()
        return None if row is None else _row_to_record(row)

    def records(self, ids: Sequence[int]) -> dict[int, Record]:
        """Records of the ids that exist (removed ids are simply absent)."""
        out: dict[int, Record] = {}
        conn = self.reader()
        for chunk in _chunks(list(ids), SQL_VARS):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {RECORD_COLUMNS} FROM items WHERE id IN ({marks})", chunk):
                out[row[0]] = _row_to_record(row)
        return out

    def find_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """The first id stored under each content hash that the log holds (absent hashes are left out)."""
        found: dict[str, int] = {}
        conn = self.reader()
        for chunk in _chunks(list(dict.fromkeys(hashes)), SQL_VARS):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT content_hash, MIN(id) FROM items WHERE content_hash IN ({marks}) GROUP BY content_hash"
            found.update(conn.execute(sql, chunk).fetchall())
        return found

    def log_position(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(last item id ever assigned, last removal seq)."""
        last_id = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        last_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM removals").fetchone()[0]
        return (last_id[0] if last_id else 0), last_seq

    def vectors_after(
        self, conn: sqlite3.Connection, after_id: int, dim: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, xb) chunks of the live rows with id > after_id, in id order; each blob checked against its crc32."""
        cursor = conn.execute("SELECT id, vector, vector_crc FROM items WHERE id > ? ORDER BY id", (after_id,))
        while rows := cursor.fetchmany(FETCH_ROWS):
            for rid, blob, crc in rows:
                if zlib.crc32(blob) != crc:
                    raise CorruptGallery(f"gallery database {self.path}: the vector of id {rid} is corrupt (crc32)")
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blobs = b"".join(r[1] for r in rows)
            if len(blobs) != len(rows) * dim * 4:
                raise CorruptGallery(f"gallery database {self.path}: a stored vector is not {dim} float32 values")
            yield ids, np.frombuffer(blobs, dtype=np.float32).reshape(len(rows), dim)

    def removals_after(self, conn: sqlite3.Connection, after_seq: int) -> list[int]:
        return [r[0] for r in conn.execute("SELECT id FROM removals WHERE seq > ? ORDER BY seq", (after_seq,))]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
