"""The gallery in Milvus: one collection per gallery, on a Milvus server or in a Milvus Lite file.

Collection: id (INT64 primary key, assigned here), vector (FLOAT_VECTOR, L2-normalised, metric IP), person_id,
camera_id, track_id, source, content_hash (VARCHAR, nullable), captured_at, added_at (DOUBLE) and metadata (JSON).
Its properties record what the gallery is: reid.model_id, reid.dim, reid.metric, reid.factory and reid.next_id;
opening checks them, as the embedded store checks its log, and refuses another model with ModelMismatch.

Consistency level Strong: a search sees every write acknowledged before it, so an added item is found by the next
search and a removed one never comes back. Milvus filters before it ranks, so a filtered search returns the
true top k that pass (no over-fetching). Filters become Milvus boolean expressions built by
index.milvus_expr from validated values only.

Ids are not Milvus' auto_id: those are assigned by the server, so a copy into another collection would renumber
every item. They come from reid.next_id, reserved in blocks (the block is persisted before any of its ids is
used, so ids are never reused after a crash; a crash leaves a gap). Reservations re-read the property, so writer
processes that take turns share one sequence; two processes reserving at the same instant could collide, so run
one writing process per collection (the embedded store enforces the same with its lock file). add_new's
content-hash check and insert run under one lock: atomic within a process.

Errors: every public method (and open) raises the gallery's errors, never the client's (index.milvus_errors).

Every client call has a deadline, ``timeout`` seconds (REID_GALLERY_TIMEOUT_S at the server, DEFAULT_TIMEOUT_S
here). Without one, a Milvus that stops answering (a hung server, a host gone without closing its connections)
holds a call until gRPC and pymilvus give up on their own: half a minute per call here against Milvus Lite, and
pymilvus retries an unavailable server up to 75 times with back-off. With it, pymilvus stops retrying once the
deadline has passed and the call fails as GalleryUnavailable (a reconnect attempt inside the call is bounded by the
same timeout, so a call can take up to about twice it). Loading a collection at open takes minutes for a large
one: it gets LOAD_TIMEOUT_S, or the timeout if that is longer.

A dropped collection is not created again empty. Milvus keeps no file of ours beside a collection, so the
database keeps the evidence: a database property ``reid.gallery.<collection>`` says the collection held items
(written before its first rows are inserted, and on opening a gallery that holds items). Opening a collection
that is missing while that property says it held items is refused with MissingLog, as the embedded store refuses a
folder whose log is gone; ``allow_missing_log=True`` (REID_GALLERY_ALLOW_MISSING_LOG) starts it empty on purpose.

Metadata is checked on the way in with index.metadata.check (NaN, infinity, depth beyond MAX_DEPTH and integers
beyond 64 bits, which Milvus' JSON cannot hold, are refused with MetadataError before anything is written) and on
the way out: a stored value that could not be served reads as ``{"_unreadable": reason}``, as in the embedded store.

Index types by the same factory strings as the embedded store (Flat -> FLAT, IVF{n},Flat -> IVF_FLAT,
IVF{n},PQ{m} -> IVF_PQ, HNSW{M} -> HNSW), or any Milvus index type by name, with parameters after a colon,
passed through unchanged (GPU_CAGRA:intermediate_graph_degree=64, GPU_IVF_FLAT:nlist=1024, DISKANN).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from time import time

import numpy as np
from pymilvus import DataType, MilvusClient

from index import metadata as meta
from index.errors import GalleryError, MissingLog, ModelMismatch
from index.milvus_errors import FAILURES, check_server_version, gallery_error, milvus_boundary
from index.milvus_expr import (
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    MAX_TEXT,
    filter_expression,
    id_list,
    in_list,
    milvus_index,
    number_literal,
    search_params,
)
from index.milvus_tracks import MilvusTracks
from index.protocol import GalleryBase
from index.records import Hit, Record, SearchFilter
from index.uri import DEFAULT_MILVUS_TIMEOUT_S, GalleryURI

log = logging.getLogger(__name__)

METRIC = "inner_product"
FORMAT = "1"
PROP = "reid."  # prefix of the collection properties this module owns
ID_BLOCK = 1024  # ids reserved per property write
MAX_SOURCE = 4096
MAX_HASH = 128
QUERY_WINDOW = 16_384  # Milvus' default cap on one query's or search's result size
LITE_FLUSH_ROWS = 512  # Milvus Lite searches unflushed rows one by one (~0.1 ms each): flush every this many
# Deadline of each client call (None: pymilvus' own behaviour, no deadline).
DEFAULT_TIMEOUT_S = DEFAULT_MILVUS_TIMEOUT_S
LOAD_TIMEOUT_S = 600.0  # loading a collection of tens of millions of vectors at open is legitimately slow
TEXT_FIELDS = ("person_id", "camera_id", "track_id", "source", "content_hash")
RECORD_FIELDS = [*TEXT_FIELDS, "captured_at", "added_at", "metadata"]
DATABASE = "default"  # a gallery URI names no database: every collection lives in Milvus' default one
HELD_ITEMS = PROP + "gallery."  # database property per collection: the evidence that it held items
# Milvus' JSON holds 64-bit integers only: a longer one would be refused by the client after validation passed.
STORED_METADATA = dataclasses.replace(meta.STORABLE, int64=True)
_REPORTED: set[tuple[str, str, int]] = set()  # (uri, collection, id) of stand-ins served, logged once each
_REPORTED_MAX = 10_000

# -- the gallery --------------------------------------------------------------------------------------------


class MilvusGallery(MilvusTracks, GalleryBase):
    """Use MilvusGallery.open (or index.open_gallery); the constructor does no I/O."""

    backend = "milvus"

    def __init__(
        self,
        client: MilvusClient,
        target: GalleryURI,
        *,
        nprobe: int | None,
        ef_search: int | None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ):
        if timeout is not None and not timeout > 0:
            raise ValueError("the Milvus timeout must be a positive number of seconds (or None)")
        self._client = client
        self.timeout = timeout
        self.target = target
        self.collection = target.collection
        self.lite = target.kind == "milvus-lite"
        self.nprobe = nprobe
        self.ef_search = ef_search
        self._props: dict[str, str] = {}
        self._index_type = ""
        self._index_params: dict = {}
        self._write_mutex = threading.Lock()  # one mutation at a time in this process; searches never take it
        self._next_id = 1
        self._reserved_end = 1  # ids in [_next_id, _reserved_end) are persisted as reserved
        self._count = 0
        self._unflushed = 0
        self._closed = False
        self._marked = False  # the database records that this collection holds items
        self._recovered: list[str] = []

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: GalleryURI,
        *,
        model_id: str | None = None,
        dim: int | None = None,
        factory: str = "Flat",
        nprobe: int | None = None,
        ef_search: int | None = None,
        allow_missing_log: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> MilvusGallery:
        """Open the collection, or create it when model_id and dim are given and it does not exist. A collection
        that is missing while the database records that it held items is refused (MissingLog) unless
        ``allow_missing_log``: then it starts empty. ``timeout``: seconds each call to Milvus may take."""
        if timeout is not None and not timeout > 0:
            raise ValueError("the Milvus timeout must be a positive number of seconds (or None)")
        uri = target.client_uri()
        try:
            # The client's timeout bounds connecting and reconnecting; each call gets its own deadline below.
            client = MilvusClient(uri=uri, token=target.token or "", timeout=timeout)
        except FAILURES as exc:
            raise gallery_error(exc, target) from exc
        gallery = cls(client, target, nprobe=nprobe, ef_search=ef_search, timeout=timeout)
        try:
            check_server_version(client, target, timeout)
            gallery._open_or_create(model_id, dim, factory, allow_missing_log)
        except BaseException:
            gallery._client.close()
            raise
        return gallery

    @milvus_boundary
    def _open_or_create(self, model_id: str | None, dim: int | None, factory: str, allow_missing_log: bool) -> None:
        if not self._client.has_collection(self.collection, timeout=self.timeout):
            held = self._held_items()
            if held is not None and not allow_missing_log:
                raise MissingLog(
                    f"collection {self.collection!r} is missing while the database records that it held items"
                    f" ({held}); restore it, or open with allow_missing_log=True to start an empty gallery"
                )
            if model_id is None:
                raise GalleryError(f"no gallery in {self.target} (collection {self.collection!r} is missing)")
            assert dim is not None  # given with model_id
            self._create(model_id, dim, factory)
            if held is not None:  # nothing is in the new collection: dropping it again loses nothing
                self._set_held_items(False, model_id)
                self._recovered.append(f"collection {self.collection!r} was missing ({held}); started empty as allowed")
                log.warning("gallery %s: %s", self.target, self._recovered[-1])
        description = self._client.describe_collection(self.collection, timeout=self.timeout)
        self._props = {k: v for k, v in (description.get("properties") or {}).items() if k.startswith(PROP)}
        missing = [k for k in ("model_id", "dim", "metric", "factory", "next_id") if PROP + k not in self._props]
        if missing:
            raise GalleryError(f"collection {self.collection!r} in {self.target} is not a gallery (no {missing})")
        vector = next((f for f in description["fields"] if f["name"] == "vector"), None)
        if vector is None or int(vector["params"].get("dim", -1)) != self.dim:
            raise GalleryError(f"collection {self.collection!r}: its vector field disagrees with reid.dim")
        if self._props[PROP + "metric"] != METRIC:
            raise GalleryError(f"collection {self.collection!r} uses metric {self._props[PROP + 'metric']}")
        if model_id is not None:
            self.check_compatible(model_id, dim)
        self._index_type, self._index_params = milvus_index(self.factory, self.dim)
        load_timeout = None if self.timeout is None else max(self.timeout, LOAD_TIMEOUT_S)
        self._client.load_collection(self.collection, timeout=load_timeout)  # a reopened collection starts released
        self._next_id = self._reserved_end = int(self._props[PROP + "next_id"])
        self._count = self._count_rows()
        if self._next_id > 1:  # ids were handed out: make sure the database records it (older versions did not)
            self._mark_held_items()

    def _create(self, model_id: str, dim: int, factory: str) -> None:
        if not model_id or dim < 1:
            raise ValueError("a gallery needs a model_id and a positive dim")
        index_type, params = milvus_index(factory, dim)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        for name in TEXT_FIELDS:
            size = MAX_SOURCE if name == "source" else MAX_HASH if name == "content_hash" else MAX_TEXT
            schema.add_field(name, DataType.VARCHAR, max_length=size, nullable=True)
        schema.add_field("captured_at", DataType.DOUBLE, nullable=True)
        schema.add_field("added_at", DataType.DOUBLE)
        schema.add_field("metadata", DataType.JSON)
        index = self._client.prepare_index_params()
        index.add_index("vector", index_type=index_type, metric_type="IP", params=params)
        index.add_index("content_hash", index_type="INVERTED")  # add_new looks hashes up on every add
        properties = {
            PROP + "model_id": model_id,
            PROP + "dim": str(dim),
            PROP + "metric": METRIC,
            PROP + "factory": factory,
            PROP + "next_id": "1",
            PROP + "format": FORMAT,
            PROP + "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._client.create_collection(
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties=properties,
            timeout=self.timeout,
        )

    # -- the evidence that a collection held items ----------------------------------------------------------

    def _held_items(self) -> str | None:
        """What the database records about this collection's items (model, when), None if it never held any."""
        text = self._client.describe_database(DATABASE, timeout=self.timeout).get(HELD_ITEMS + self.collection)
        if text is None:
            return None
        try:
            value = json.loads(text)
            if not value.get("held_items", True):
                return None
            return f"model {value.get('model_id')!r}, since {value.get('since')}"
        except (ValueError, AttributeError):
            return "an unreadable record"  # evidence all the same

    def _set_held_items(self, held: bool, model_id: str) -> None:
        value = {
            "held_items": held,
            "model_id": model_id,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._client.alter_database_properties(
            DATABASE, {HELD_ITEMS + self.collection: json.dumps(value)}, timeout=self.timeout
        )

    def _mark_held_items(self) -> None:
        """Record that this collection holds items, before its first rows go in (once per open gallery)."""
        if not self._marked:
            if self._held_items() is None:
                self._set_held_items(True, self.model_id)
            self._marked = True

    def check_compatible(self, model_id: str, dim: int | None) -> None:
        if model_id != self.model_id:
            raise ModelMismatch(f"the gallery holds embeddings of model {self.model_id!r}, not {model_id!r}")
        if dim is not None and dim != self.dim:
            raise ModelMismatch(f"the gallery holds {self.dim}-d vectors, not {dim}-d")

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._props[PROP + "model_id"]

    @property
    def dim(self) -> int:
        return int(self._props[PROP + "dim"])

    @property
    def factory(self) -> str:
        return self._props[PROP + "factory"]

    def __len__(self) -> int:
        return self._count

    # -- validation ----------------------------------------------------------------------------------------

    def _rows(self, ids: Sequence[int], xb: np.ndarray, records: Sequence[Record], keep_added_at: bool) -> list[dict]:
        now = time()
        rows = []
        for i, x, r in zip(ids, xb, records, strict=True):
            metadata = {} if r.metadata is None else r.metadata
            meta.check(metadata, STORED_METADATA)  # MetadataError (a ValueError) before anything is written
            row = {"id": int(i), "vector": x.tolist(), "metadata": metadata}
            for name in TEXT_FIELDS:
                value = getattr(r, name)
                if value is not None:
                    value = str(value)
                    limit = MAX_SOURCE if name == "source" else MAX_HASH if name == "content_hash" else MAX_TEXT
                    try:
                        size = len(value.encode("utf-8"))
                    except UnicodeEncodeError:
                        raise ValueError(f"Record.{name} is not valid Unicode text") from None
                    if size > limit:
                        raise ValueError(f"Record.{name} is longer than {limit} bytes")
                row[name] = value
            row["captured_at"] = None if r.captured_at is None else float(number_literal(r.captured_at, "captured_at"))
            row["added_at"] = float(r.added_at) if keep_added_at and r.added_at is not None else now
            rows.append(row)
        return rows

    # -- writes --------------------------------------------------------------------------------------------

    def _reserve(self, n: int) -> list[int]:
        """n fresh ids; the block they come from is persisted first. Caller holds the write mutex."""
        if self._next_id + n > self._reserved_end:
            stored = int(self._read_props().get(PROP + "next_id", "1"))
            start = max(self._next_id, stored)
            end = start + max(n, ID_BLOCK)
            self._client.alter_collection_properties(
                self.collection, properties={PROP + "next_id": str(end)}, timeout=self.timeout
            )
            self._next_id, self._reserved_end = start, end
        ids = list(range(self._next_id, self._next_id + n))
        self._next_id += n
        return ids

    def _read_props(self) -> dict[str, str]:
        return dict(self._client.describe_collection(self.collection, timeout=self.timeout).get("properties") or {})

    def _insert(self, rows: list[dict]) -> None:
        self._mark_held_items()
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            self._client.insert(self.collection, chunk, timeout=self.timeout)
            self._count += len(chunk)
            self._unflushed += len(chunk)
        if self.lite and self._unflushed >= LITE_FLUSH_ROWS:
            self._client.flush(self.collection, timeout=self.timeout)
            self._unflushed = 0

    @milvus_boundary
    def add(self, xb, records: Sequence[Record], *, model_id: str) -> list[int]:
        """Add vectors with their records; returns the new ids once Milvus has acknowledged them."""
        with self._write_mutex:
            return self._add_locked(xb, records, model_id)

    @milvus_boundary
    def add_new(self, xb, records: Sequence[Record], *, model_id: str) -> list[tuple[int, bool]]:
        """As the embedded store (GalleryBase.add_new), with Milvus' errors mapped at this boundary."""
        return super().add_new(xb, records, model_id=model_id)

    def _add_locked(self, xb, records: Sequence[Record], model_id: str) -> list[int]:
        self._check_open()
        self._check_model(model_id)
        xb = self._unit_vectors(xb, "vectors")
        records = list(records)
        if len(records) != len(xb):
            raise ValueError(f"{len(xb)} vectors but {len(records)} records")
        if not len(xb):
            return []
        rows = self._rows([0] * len(xb), xb, records, keep_added_at=False)  # validated before ids are spent
        ids = self._reserve(len(rows))
        for row, i in zip(rows, ids, strict=True):
            row["id"] = i
        self._insert(rows)
        return ids

    @milvus_boundary
    def import_items(self, ids: Sequence[int], xb, records: Sequence[Record], *, model_id: str) -> int:
        """Add items under the ids they have in another gallery (reid gallery copy); ids must be new here."""
        ids = [int(i) for i in ids]
        if any(i < 1 for i in ids) or len(set(ids)) != len(ids):
            raise ValueError("imported ids must be distinct positive integers")
        with self._write_mutex:
            self._check_open()
            self._check_model(model_id)
            xb = self._unit_vectors(xb, "vectors")
            if not ids:
                return 0
            present = self.records(ids)
            if present:
                raise GalleryError(f"the gallery already holds ids {sorted(present)[:5]}")
            rows = self._rows(ids, xb, list(records), keep_added_at=True)
            top = max(ids) + 1
            if top > int(self._read_props().get(PROP + "next_id", "1")):  # later adds continue after the copy
                self._client.alter_collection_properties(
                    self.collection, properties={PROP + "next_id": str(top)}, timeout=self.timeout
                )
            if top > self._next_id:
                self._next_id = self._reserved_end = top
            self._insert(rows)
        return len(ids)

    @milvus_boundary
    def remove(self, ids) -> int:
        """Remove the ids that exist; returns how many were removed. Ids are never reused."""
        self._check_open()
        wanted = sorted({int(i) for i in np.asarray(ids, dtype=np.int64).ravel() if i > 0})
        with self._write_mutex:
            present = sorted(self.records(wanted)) if wanted else []
            for start in range(0, len(present), 1000):
                self._client.delete(self.collection, ids=present[start : start + 1000], timeout=self.timeout)
            self._count -= len(present)
        return len(present)

    # -- reads ---------------------------------------------------------------------------------------------

    def _query(self, expr: str, fields: list[str], limit: int) -> list[dict]:
        return self._client.query(self.collection, filter=expr, output_fields=fields, limit=limit, timeout=self.timeout)

    @milvus_boundary
    def get(self, id: int) -> Record | None:
        self._check_open()
        return None if int(id) < 1 else self.records([int(id)]).get(int(id))

    @milvus_boundary
    def records(self, ids: Sequence[int]) -> dict[int, Record]:
        """Records of the ids that exist (removed ids are simply absent)."""
        self._check_open()
        out: dict[int, Record] = {}
        wanted = sorted({int(i) for i in ids if int(i) > 0})
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            for row in self._query(f"id in {id_list(chunk)}", ["id", *RECORD_FIELDS], len(chunk)):
                out[int(row["id"])] = self._record(row)
        return out

    @milvus_boundary
    def find_hash(self, content_hash: str) -> int | None:
        return self.find_hashes([content_hash]).get(content_hash)

    @milvus_boundary
    def find_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """The first id stored under each content hash the gallery holds."""
        self._check_open()
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            chunk = frozenset(unique[start : start + 500])
            rows = self._query(in_list("content_hash", chunk), ["id", "content_hash"], QUERY_WINDOW)
            for row in rows:
                h, i = row["content_hash"], int(row["id"])
                found[h] = min(i, found.get(h, i))
        return found

    @milvus_boundary
    def search(self, xq, k: int, filters: SearchFilter | None = None, *, model_id: str) -> list[list[Hit]]:
        """Top-k hits per query, best first, with their records; fewer than k when the gallery runs out."""
        self._check_open()
        self._check_model(model_id)
        xq = self._unit_vectors(xq, "queries")
        if k < 1:
            raise ValueError("k must be at least 1")
        expr = filter_expression(filters)
        params = {"metric_type": "IP", "params": search_params(self._index_type, k, self.nprobe, self.ef_search)}
        found = self._client.search(
            self.collection,
            data=[x.tolist() for x in xq],
            limit=min(k, QUERY_WINDOW),
            filter=expr,
            output_fields=RECORD_FIELDS,
            search_params=params,
            timeout=self.timeout,
        )
        results = []
        for row in found:
            hits = [Hit(int(h["id"]), float(h["distance"]), self._record({**h["entity"], "id": h["id"]})) for h in row]
            hits.sort(key=lambda h: (-h.score, h.id))
            results.append(hits)
        return results

    @milvus_boundary
    def scan(self, after_id: int, limit: int) -> tuple[np.ndarray, np.ndarray, list[Record]]:
        """Up to ``limit`` items with id > after_id, in id order: (ids, unit vectors, records)."""
        self._check_open()
        end = int(self._read_props().get(PROP + "next_id", "1"))  # every id ever assigned is below it
        lo, window = int(after_id), max(1, min(limit, QUERY_WINDOW))
        rows: list[dict] = []
        while lo < end and len(rows) < limit:
            # id windows rather than a limit: Milvus does not promise which rows a limited query returns
            found = self._query(f"id > {lo} and id <= {lo + window}", ["id", "vector", *RECORD_FIELDS], window)
            rows += sorted(found, key=lambda r: int(r["id"]))
            lo += window
            if not found:  # a gap (ids reserved and never used, or removed): widen
                window = min(window * 2, QUERY_WINDOW)
        rows = rows[:limit]
        ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
        xb = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), self.dim)
        return ids, xb, [self._record(r) for r in rows]

    @milvus_boundary
    def calibration(self) -> dict | None:
        """The verdict calibration stored with ``set_calibration`` (a JSON object), or None (read at open)."""
        self._check_open()
        text = self._props.get(PROP + "calibration")
        return None if text is None else json.loads(text)

    @milvus_boundary
    def set_calibration(self, calibration: dict) -> None:
        """Store the verdict calibration (index.calibration) as a collection property."""
        self._check_open()
        text = json.dumps(calibration, sort_keys=True)
        with self._write_mutex:
            self._client.alter_collection_properties(
                self.collection, properties={PROP + "calibration": text}, timeout=self.timeout
            )
            self._props[PROP + "calibration"] = text

    def _count_rows(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"], timeout=self.timeout)
        return int(rows[0]["count(*)"])

    @milvus_boundary
    def stats(self) -> dict:
        self._check_open()
        self._count = self._count_rows()
        return {
            "backend": self.backend,
            "uri": str(self.target),
            "collection": self.collection,
            "lite": self.lite,
            "model_id": self.model_id,
            "dim": self.dim,
            "metric": METRIC,
            "factory": self.factory,
            "index_type": self._index_type,
            "index_params": dict(self._index_params),
            "serving": self._index_type,
            "count": self._count,
            "consistency": "Strong",
            "nprobe": self.nprobe or DEFAULT_NPROBE,
            "ef_search": self.ef_search or DEFAULT_EF_SEARCH,
            "timeout_s": self.timeout,
            "next_id": self._next_id,
            "recovered": list(self._recovered),
        }

    # -- closing -------------------------------------------------------------------------------------------

    @milvus_boundary
    def close(self) -> None:
        """Flush (Milvus Lite) and close the connection. Safe to call twice."""
        if self._closed:
            return
        try:
            if self.lite and self._unflushed:
                with self._write_mutex:
                    self._client.flush(self.collection, timeout=self.timeout)
                    self._unflushed = 0
        finally:
            self._closed = True
            self._client.close()

    def _record(self, row: dict) -> Record:
        rid = int(row["id"])
        metadata, reason = served_metadata(row.get("metadata"))
        if reason:
            key = (str(self.target), self.collection, rid)
            if key not in _REPORTED:
                if len(_REPORTED) < _REPORTED_MAX:
                    _REPORTED.add(key)
                log.warning("gallery %s, id %d served with a stand-in: %s", self.target, rid, reason)
        return Record(
            person_id=row.get("person_id"),
            camera_id=row.get("camera_id"),
            captured_at=row.get("captured_at"),
            track_id=row.get("track_id"),
            source=row.get("source"),
            content_hash=row.get("content_hash"),
            metadata=metadata,
            id=rid,
            added_at=row.get("added_at"),
        )


def served_metadata(stored: object) -> tuple[dict, str | None]:
    """(metadata, None) for a stored value that can be served, ({"_unreadable": reason}, reason) otherwise; never
    raises. Milvus hands JSON back parsed, so a parsed value gets the check index.metadata.decode applies to text."""
    if isinstance(stored, dict):
        try:
            meta.check(stored)
        except meta.MetadataError as exc:
            reason = f"the stored metadata cannot be served: {exc}"
            return {meta.UNREADABLE: reason}, reason
        return stored, None
    return meta.decode(stored)
