"""The log of record: vectors and their metadata in SQLite (WAL, synchronous=FULL).

An add is acknowledged only after its transaction commits, so it survives kill -9 whatever happens to the
faiss snapshot. Ids come from AUTOINCREMENT and are never reused. A remove deletes the row and appends
the id (and its vector's crc32) to ``removals`` so that a snapshot older than the remove can be caught up
and still be checked against the log.

SQLite checks its pages and structure, not the bytes of a value, so every row carries two crc32s: one of its
vector (checked whenever vectors are read) and one of its record (checked whenever a record is read: a row
that fails it is refused, never served). Reads never fail on a value an older version stored: text that is
not UTF-8 is decoded with U+FFFD, a capture time that is not a finite number reads as None, and metadata that
cannot be served reads as ``{"_unreadable": reason}`` (index/metadata.py); each is logged once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index import metadata
from index.errors import CorruptGallery
from index.records import Record

log = logging.getLogger(__name__)

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
    vector_crc INTEGER NOT NULL,  -- crc32 of the blob: SQLite checks pages and structure, not payload bytes
    record_crc INTEGER  -- crc32 of the record (record_crc below); NULL in rows written before it existed
);
CREATE INDEX IF NOT EXISTS items_content_hash ON items (content_hash);
CREATE TABLE IF NOT EXISTS removals (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL, vector_crc INTEGER);
"""
# Columns later versions added to a log of record: (table, column, declaration). Added on a writable open.
UPGRADES = [("items", "record_crc", "INTEGER"), ("removals", "vector_crc", "INTEGER")]
GALLERY_ID = "gallery_id"  # in meta: a random id made with the log; manifests name the log they belong to
# Metadata is read as bytes (CAST) so that text which is not UTF-8 reaches metadata.decode instead of failing.
RECORD_COLUMNS = (
    "id, person_id, camera_id, captured_at, track_id, source, content_hash, CAST(metadata AS BLOB), added_at, "
)
TEXT_FIELDS = ("person_id", "camera_id", "track_id", "source", "content_hash")
SQL_VARS = 900  # below SQLite's default limit on host parameters per statement
FETCH_ROWS = 4096


def record_crc(gallery_id: str, rid: int, person, camera, captured, track, source, chash, meta_text, added) -> int:
    """crc32 of a record as stored, with its id (a row cannot move to another id unnoticed) and its gallery's id
    (nor be a page of another gallery's log, say from a foreign -wal file, that SQLite took for this one's)."""
    fields = [gallery_id, rid, person, camera, captured, track, source, chash, meta_text, added]
    return zlib.crc32(json.dumps(fields, allow_nan=True).encode())


def _check_row(row, gallery_id: str, path: Path | None) -> None:
    """CorruptGallery if a row with a record crc32 fails it (rows older versions wrote have none)."""
    rid, person, camera, captured, track, source, chash, meta, added, crc = row
    if crc is None:
        return
    try:
        meta_text = meta.decode("utf-8")
        ok = record_crc(gallery_id, rid, person, camera, captured, track, source, chash, meta_text, added) == crc
    except (AttributeError, UnicodeDecodeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CorruptGallery(f"gallery database {path}: the record of id {rid} is corrupt (crc32)")


def _row_to_record(row, gallery_id: str = "", path: Path | None = None) -> Record:
    """A Record from a stored row; CorruptGallery if the row fails its crc32, anything else is served safely."""
    _check_row(row, gallery_id, path)
    rid, person, camera, captured, track, source, chash, meta, added, _ = row
    problems: list[str] = []
    texts = [
        _served_text(v, name, problems)
        for v, name in zip((person, camera, track, source, chash), TEXT_FIELDS, strict=True)
    ]
    meta_value, reason = metadata.decode(meta)
    if reason:
        problems.append(reason)
    person_text, camera_text, track_text, source_text, hash_text = texts
    record = Record(
        person_text,
        camera_text,
        _served_time(captured, "captured_at", problems),
        track_text,
        source_text,
        hash_text,
        metadata=meta_value,
        id=rid,
        added_at=_served_time(added, "added_at", problems),
    )
    if problems:
        _report_once(path, rid, problems)
    return record


def _served_text(value, name: str, problems: list[str]) -> str | None:
    if value is None or isinstance(value, str):
        return value  # text that is not UTF-8 already arrived with U+FFFD (the connection's text_factory)
    if isinstance(value, bytes):
        problems.append(f"{name} is stored as a blob")
        return value.decode("utf-8", "replace")
    return str(value)


def _served_time(value, name: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    problems.append(f"{name} is not a finite number; served as null")
    return None


_REPORTED: set[tuple[str, int]] = set()
_REPORTED_MAX = 10_000  # bounded: a log full of old rows must not grow this without end


def _report_once(path: Path | None, rid: int, problems: list[str]) -> None:
    key = (str(path), rid)
    if key in _REPORTED:
        return
    if len(_REPORTED) < _REPORTED_MAX:
        _REPORTED.add(key)
    log.warning("gallery %s, id %d served with stand-ins: %s", path, rid, "; ".join(problems))


def _decode_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _opt_str(value) -> str | None:
    return None if value is None else str(value)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Store:
    """SQLite access: one writer connection (used under the gallery's write mutex) and one reader per thread."""

    def __init__(self, path: Path, readonly: bool):
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._record_select: str | None = None  # the record columns of this log (older logs lack record_crc)
        self.gallery_id = ""  # from meta (check, initialise, set_setting): part of every record's crc32

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
            conn.text_factory = _decode_text  # text that is not UTF-8 must not fail a read
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
        self.gallery_id = settings.get(GALLERY_ID, "")

    def upgrade(self) -> None:
        """Add the columns later versions added (writable opens): older rows keep NULL there."""
        conn = self.writer
        for table, column, declaration in UPGRADES:
            if column not in self._columns(conn, table):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._record_select = None

    @staticmethod
    def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

    def _records_sql(self, conn: sqlite3.Connection) -> str:
        if self._record_select is None:
            crc = "record_crc" if "record_crc" in self._columns(conn, "items") else "NULL"
            self._record_select = RECORD_COLUMNS + crc
        return self._record_select

    def set_setting(self, key: str, value: str) -> None:
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        conn.execute("COMMIT")
        if key == GALLERY_ID:
            self.gallery_id = value

    def check(self) -> dict[str, str]:
        """Integrity check (pages and structure) and the settings; CorruptGallery if either fails."""
        conn = self.reader()
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                raise CorruptGallery(f"gallery database {self.path} failed its integrity check: {rows[:3]}")
            settings = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            # Every column the gallery reads must be there: a damaged schema fails here, not in a search.
            self._record_select = None
            conn.execute(f"SELECT {self._records_sql(conn)}, vector, vector_crc FROM items LIMIT 0").fetchall()
            conn.execute("SELECT seq, id FROM removals LIMIT 0").fetchall()
            conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptGallery(f"gallery database {self.path} is corrupt: {exc}") from exc
        self.gallery_id = settings.get(GALLERY_ID, "")
        return settings

    def verify_records(self, conn: sqlite3.Connection) -> int:
        """Check every record's crc32 (CorruptGallery on the first that fails); returns the rows checked. Run
        before the index is rebuilt from the log: a rebuild must not serve rows that are not this gallery's."""
        checked = 0
        cursor = conn.execute(f"SELECT {self._records_sql(conn)} FROM items")
        while rows := cursor.fetchmany(FETCH_ROWS):
            for row in rows:
                _check_row(row, self.gallery_id, self.path)
            checked += len(rows)
        return checked

    # -- writes (caller holds the gallery's write mutex) -------------------------------------------------------

    def insert(
        self,
        xb: np.ndarray,
        records: Sequence[Record],
        *,
        given_ids: Sequence[int] | None = None,
        keep_added_at: bool = False,
    ) -> list[int]:
        """Commit the rows; metadata.MetadataError (a ValueError) before anything is written if a record's
        metadata could not be read back as it was given. ``given_ids`` (increasing, above every id assigned so
        far) and ``keep_added_at`` import rows from another gallery under their own ids and times."""
        now = time.time()
        stamps = [r.added_at if keep_added_at and r.added_at is not None else now for r in records]
        rows = []
        for x, r in zip(xb, records, strict=True):
            captured = None if r.captured_at is None else float(r.captured_at)
            if captured is not None and not math.isfinite(captured):
                raise ValueError("captured_at must be a finite number")
            if captured == 0.0:
                captured = 0.0  # SQLite stores -0.0 as 0: the checksum must be of what reads back
            fields = [_opt_str(v) for v in (r.person_id, r.camera_id, r.track_id, r.source, r.content_hash)]
            for name, value in zip(TEXT_FIELDS, fields, strict=True):
                if value is not None and not _is_unicode(value):
                    raise ValueError(f"{name} is not valid Unicode (a lone surrogate)")
            person, camera, track, source, chash = fields
            rows.append((person, camera, captured, track, source, chash, metadata.encode(r.metadata), x.tobytes()))
        conn = self.writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The ids AUTOINCREMENT would pick, chosen here because each is part of its record's checksum.
            last = conn.execute(
                "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0),"
                " COALESCE((SELECT MAX(id) FROM items), 0))"
            ).fetchone()[0]
            ids = list(range(last + 1, last + 1 + len(rows))) if given_ids is None else [int(i) for i in given_ids]
            if ids and ids[0] <= last:
                raise ValueError(f"id {ids[0]} is not above the last id assigned ({last})")
            conn.executemany(
                "INSERT INTO items (id, person_id, camera_id, captured_at, track_id, source, content_hash,"
                " metadata, added_at, vector, vector_crc, record_crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        rid,
                        person,
                        camera,
                        captured,
                        track,
                        source,
                        chash,
                        meta,
                        stamp,
                        blob,
                        zlib.crc32(blob),
                        record_crc(self.gallery_id, rid, person, camera, captured, track, source, chash, meta, stamp),
                    )
                    for rid, (person, camera, captured, track, source, chash, meta, blob), stamp in zip(
                        ids, rows, stamps, strict=True
                    )
                ],
            )
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
            found = []  # (id, vector crc32): a snapshot from before the remove is checked against these
            for chunk in _chunks(list(ids), SQL_VARS):
                marks = ",".join("?" * len(chunk))
                found += conn.execute(f"SELECT id, vector_crc FROM items WHERE id IN ({marks})", chunk).fetchall()
            found.sort()
            present = [rid for rid, _ in found]
            for chunk in _chunks(present, SQL_VARS):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
            conn.executemany("INSERT INTO removals (id, vector_crc) VALUES (?, ?)", found)
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
        conn = self.reader()
        with self._damage_refused():
            row = conn.execute(f"SELECT {self._records_sql(conn)} FROM items WHERE id = ?", (rid,)).fetchone()
        return None if row is None else self._record(row, conn)

    def _record(self, row, conn: sqlite3.Connection) -> Record:
        try:
            return _row_to_record(row, self.gallery_id, self.path)
        except CorruptGallery:
            # A reader that opened a log from before gallery ids sees rows a writer has since written under the
            # id it assigned: learn the id once and check again; a row that still fails is corrupt.
            known = self.setting(conn, GALLERY_ID) or ""
            if known == self.gallery_id:
                raise
            self.gallery_id = known
            return _row_to_record(row, self.gallery_id, self.path)

    @contextmanager
    def _damage_refused(self) -> Iterator[None]:
        """SQLite's own errors on a read (pages damaged past what quick_check looks at) as CorruptGallery."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise CorruptGallery(f"gallery database {self.path} is corrupt: {exc}") from exc

    def records(self, ids: Sequence[int], conn: sqlite3.Connection | None = None) -> dict[int, Record]:
        """Records of the ids that exist (removed ids are simply absent)."""
        out: dict[int, Record] = {}
        conn = conn or self.reader()
        for chunk in _chunks(list(ids), SQL_VARS):
            marks = ",".join("?" * len(chunk))
            with self._damage_refused():
                sql = f"SELECT {self._records_sql(conn)} FROM items WHERE id IN ({marks})"
                rows = conn.execute(sql, chunk).fetchall()
            for row in rows:
                out[row[0]] = self._record(row, conn)
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
        self, conn: sqlite3.Connection, after_id: int, dim: int, limit: int = -1
    ) -> Generator[tuple[np.ndarray, np.ndarray]]:
        """(ids, xb) chunks of the live rows with id > after_id (the first ``limit``; -1: all), in id order; each
        blob checked against its crc32."""
        cursor = conn.execute(
            "SELECT id, vector, vector_crc FROM items WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        while rows := cursor.fetchmany(FETCH_ROWS):
            for rid, blob, crc in rows:
                if zlib.crc32(blob) != crc:
                    raise CorruptGallery(f"gallery database {self.path}: the vector of id {rid} is corrupt (crc32)")
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blobs = b"".join(r[1] for r in rows)
            if len(blobs) != len(rows) * dim * 4:
                raise CorruptGallery(f"gallery database {self.path}: a stored vector is not {dim} float32 values")
            yield ids, np.frombuffer(blobs, dtype=np.float32).reshape(len(rows), dim)

    def vectors_of(
        self, ids: Sequence[int], dim: int, conn: sqlite3.Connection | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, xb) of the given ids that the log holds, in id order, each blob checked against its crc32: the
        float vectors an approximate index re-ranks its shortlist with, read from the log on disk."""
        conn = conn or self.reader()
        rows = []
        for chunk in _chunks(sorted({int(i) for i in ids}), SQL_VARS):
            marks = ",".join("?" * len(chunk))
            with self._damage_refused():
                rows += conn.execute(
                    f"SELECT id, vector, vector_crc FROM items WHERE id IN ({marks}) ORDER BY id", chunk
                ).fetchall()
        for rid, blob, crc in rows:
            if zlib.crc32(blob) != crc or len(blob) != dim * 4:
                raise CorruptGallery(f"gallery database {self.path}: the vector of id {rid} is corrupt (crc32)")
        found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        xb = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return found, xb

    def filter_columns_after(self, conn: sqlite3.Connection, after_id: int) -> Iterator[list[tuple]]:
        """(id, camera_id, person_id, track_id, captured_at) of the live rows with id > after_id, in id order and in
        chunks: what an in-memory column index of the filters needs (index.filters_faiss)."""
        cursor = conn.execute(
            "SELECT id, camera_id, person_id, track_id, captured_at FROM items WHERE id > ? ORDER BY id", (after_id,)
        )
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield rows

    def covered_digest(self, conn: sqlite3.Connection, last_id: int, last_seq: int) -> str | None:
        """sha256 of the (id, vector crc32) pairs a snapshot at this log position holds: the rows then live.

        Those are the live rows up to ``last_id`` plus the ones removed since ``last_seq`` (ids are never
        reused). None when it cannot be told: a removal recorded without its crc (by an older version), or a row
        that does not read back as integers.
        """
        live = conn.execute("SELECT id, vector_crc FROM items WHERE id <= ?", (last_id,)).fetchall()
        crc = "vector_crc" if "vector_crc" in self._columns(conn, "removals") else "NULL"
        sql = f"SELECT id, {crc} FROM removals WHERE seq > ? AND id <= ?"
        removed = conn.execute(sql, (last_seq, last_id)).fetchall()
        if any(c is None for _, c in removed):
            return None
        rows = live + removed
        if not all(type(i) is int and type(c) is int for i, c in rows):
            return None  # a damaged page reads back as text or bytes: the snapshot cannot be vouched for
        pairs = np.array(sorted(rows), dtype=np.int64).reshape(-1, 2)
        return hashlib.sha256(np.ascontiguousarray(pairs).tobytes()).hexdigest()

    def removals_after(self, conn: sqlite3.Connection, after_seq: int) -> list[int]:
        return [r[0] for r in conn.execute("SELECT id FROM removals WHERE seq > ? ORDER BY seq", (after_seq,))]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
