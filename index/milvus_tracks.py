"""Tracks and identities in a Milvus gallery: tracks derived from the items, identities in a second collection.

A track is read from the items that carry its ``track_id`` (one query over the item collection, in id windows),
so it follows every add and every removal exactly, with nothing to keep up to date and nothing a crash can leave
behind: its camera (its first item's), first/last capture time, item count, best item (highest metadata
``quality``, else 1; lowest id among equals), its feature (the quality-weighted mean of its items' vectors,
re-normalised) and its paging position (its lowest item id). The cost is a scan of the items that have a track
per listing: fine for the galleries Milvus Lite holds; a cluster with millions of tracked items wants a
materialised table (as the embedded store keeps, index.tracks).

Identities live in ``<collection>__identities`` (track_id primary key, identity_id, linked_through; Milvus needs a
vector field, so a constant 2-d one). ``linked_through`` is the highest item id the track had when linking set
its identity: ids are never reused and an item never changes track, so a track still holds an item at or below it
exactly when some item linking saw is still there. A track whose items were all erased has none, so its identity
is gone and a later track reusing its id starts without one: a relink never resurrects erased items. Identity
numbers come from the item collection's property ``reid.next_identity``, never reused.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from pymilvus import DataType, MilvusClient

from index.milvus_errors import milvus_boundary
from index.milvus_expr import MAX_TEXT, in_list
from index.track_records import IdentitySummary, Track, TrackQuery, item_quality, matches, summarise, timeline_order

NEXT_IDENTITY = "reid.next_identity"
SUFFIX = "__identities"
WINDOW = 16_384  # Milvus' default cap on one query's result size
CHUNK = 500  # values per ``in`` expression
ITEM_FIELDS = ["id", "track_id", "camera_id", "captured_at", "metadata"]


def _derive(rows: list[dict], dim: int, with_vectors: bool) -> tuple[list[Track], dict[str, np.ndarray], dict]:
    """(tracks in seq order, feature per track, highest item id per track) from item rows."""
    by_track: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: int(r["id"])):
        by_track.setdefault(row["track_id"], []).append(row)
    tracks, features, top = [], {}, {}
    for tid, group in by_track.items():
        q = [item_quality(r.get("metadata") if isinstance(r.get("metadata"), dict) else None) for r in group]
        times = [float(r["captured_at"]) for r in group if r.get("captured_at") is not None]
        best = max(range(len(group)), key=lambda i: (q[i], -int(group[i]["id"])))
        camera = next((r["camera_id"] for r in group if r.get("camera_id") is not None), None)
        seq = int(group[0]["id"])
        tracks.append(Track(tid, camera, min(times, default=None), max(times, default=None), len(group),
                            int(group[best]["id"]), None, seq))  # fmt: skip
        top[tid] = int(group[-1]["id"])
        if with_vectors:
            x = np.asarray([r["vector"] for r in group], dtype=np.float64).reshape(len(group), dim)
            w = np.asarray(q)
            v = w @ x if w.sum() > 0 else x.sum(axis=0)
            features[tid] = (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
    return sorted(tracks, key=lambda t: t.seq), features, top


class MilvusTracks:
    """The Milvus gallery's track methods (a mixin of index.milvus.MilvusGallery: ``_client``, ``collection``,
    ``timeout``, ``dim``, ``_write_mutex``, ``_query``, ``_read_props`` and ``_check_open`` are the gallery's)."""

    if TYPE_CHECKING:  # the gallery's state and methods these use, declared for the type checker
        _client: MilvusClient
        collection: str
        timeout: float | None
        _write_mutex: threading.Lock

        @property
        def dim(self) -> int: ...
        def _query(self, expr: str, fields: list[str], limit: int) -> list[dict]: ...
        def _read_props(self) -> dict[str, str]: ...
        def _check_open(self) -> None: ...

    # -- reading the items of tracks ---------------------------------------------------------------------------

    def _tracked_rows(self, track_ids: Sequence[str] | None, with_vectors: bool) -> list[dict]:
        fields = ITEM_FIELDS + (["vector"] if with_vectors else [])
        if track_ids is not None:
            wanted, rows = list(dict.fromkeys(str(t) for t in track_ids)), []
            for start in range(0, len(wanted), CHUNK):
                rows += self._query(in_list("track_id", frozenset(wanted[start : start + CHUNK])), fields, WINDOW)
            return rows
        end = int(self._read_props().get("reid.next_id", "1"))
        lo, rows = 0, []
        while lo < end:
            expr = f"id > {lo} and id <= {lo + WINDOW} and track_id is not null"
            rows += self._query(expr, fields, WINDOW)
            lo += WINDOW
        return rows

    def _identity_collection(self) -> str:
        return self.collection + SUFFIX

    def _identity_rows(self, track_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        name = self._identity_collection()
        if not track_ids or not self._client.has_collection(name, timeout=self.timeout):
            return {}
        out, wanted = {}, list(track_ids)
        for start in range(0, len(wanted), CHUNK):
            expr = in_list("track_id", frozenset(wanted[start : start + CHUNK]))
            for r in self._client.query(
                name, filter=expr, output_fields=["track_id", "identity_id", "linked_through"], timeout=self.timeout
            ):
                out[r["track_id"]] = (int(r["identity_id"]), int(r["linked_through"]))
        return out

    def _tracks(self, track_ids: Sequence[str] | None = None, with_vectors: bool = False):
        """(tracks with their identities, features, highest item id per track)."""
        self._check_open()
        tracks, features, top = _derive(self._tracked_rows(track_ids, with_vectors), self.dim, with_vectors)
        idents = self._identity_rows([t.track_id for t in tracks])
        out = []
        for t in tracks:
            ident, through = idents.get(t.track_id, (None, 0))
            # The track's identity holds while it keeps an item linking saw (its lowest id is its seq).
            out.append(t if ident is None or t.seq > through else replace(t, identity_id=ident))
        return out, features, top

    # -- reads -------------------------------------------------------------------------------------------------

    @milvus_boundary
    def tracks(self, query: TrackQuery | None = None, *, after: int = 0, limit: int = 100) -> list[Track]:
        found = [t for t in self._tracks()[0] if t.seq > after and matches(t, query)]
        return found if limit < 0 else found[:limit]

    @milvus_boundary
    def tracks_of(self, track_ids: Sequence[str]) -> dict[str, Track]:
        return {t.track_id: t for t in self._tracks(list(track_ids))[0]}

    @milvus_boundary
    def track_items(self, track_id: str) -> list[int]:
        self._check_open()
        return sorted(int(r["id"]) for r in self._tracked_rows([str(track_id)], False))

    @milvus_boundary
    def track_vectors(self) -> tuple[list[Track], np.ndarray]:
        tracks, features, _ = self._tracks(with_vectors=True)
        xb = np.asarray([features[t.track_id] for t in tracks], np.float32).reshape(len(tracks), self.dim)
        return tracks, xb

    @milvus_boundary
    def identities(self, query: TrackQuery | None = None, *, after: int = 0, limit: int = 100) -> list[IdentitySummary]:
        tracks = self._tracks()[0]
        wanted = {t.identity_id for t in tracks if t.identity_id is not None and t.identity_id > after}
        wanted &= {t.identity_id for t in tracks if matches(t, query)}
        chosen = sorted(wanted)[: None if limit < 0 else limit]
        return summarise([t for t in tracks if t.identity_id in set(chosen)])

    @milvus_boundary
    def identity_tracks(self, identity_id: int) -> list[Track]:
        return timeline_order([t for t in self._tracks()[0] if t.identity_id == int(identity_id)])

    # -- identities (writes) -----------------------------------------------------------------------------------

    @milvus_boundary
    def reserve_identities(self, n: int) -> list[int]:
        self._check_open()
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._write_mutex:
            start = int(self._read_props().get(NEXT_IDENTITY, "1"))
            self._client.alter_collection_properties(
                self.collection, properties={NEXT_IDENTITY: str(start + n)}, timeout=self.timeout
            )
        return list(range(start, start + n))

    @milvus_boundary
    def set_identities(self, assignments: Mapping[str, int | None]) -> int:
        self._check_open()
        with self._write_mutex:
            limit = int(self._read_props().get(NEXT_IDENTITY, "1"))
            bad = [i for i in assignments.values() if i is not None and not 1 <= int(i) < limit]
            if bad:
                raise ValueError(f"identity numbers {sorted(set(bad))[:5]} were not reserved (reserve_identities)")
            _, _, top = self._tracks(list(assignments))
            rows = [
                {"track_id": tid, "identity_id": int(i), "linked_through": top[tid], "vector": [1.0, 0.0]}
                for tid, i in assignments.items()
                if tid in top and i is not None
            ]
            cleared = [tid for tid, i in assignments.items() if tid in top and i is None]
            name = self._ensure_identity_collection()
            if rows:
                self._client.upsert(name, rows, timeout=self.timeout)
            if cleared:
                self._client.delete(name, filter=in_list("track_id", frozenset(cleared)), timeout=self.timeout)
        return len(rows) + len(cleared)

    def _ensure_identity_collection(self) -> str:
        name = self._identity_collection()
        if self._client.has_collection(name, timeout=self.timeout):
            return name
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("track_id", DataType.VARCHAR, is_primary=True, max_length=MAX_TEXT)
        schema.add_field("identity_id", DataType.INT64)
        schema.add_field("linked_through", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one; never searched
        index = self._client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        self._client.create_collection(
            name, schema=schema, index_params=index, consistency_level="Strong", timeout=self.timeout
        )
        self._client.load_collection(name, timeout=self.timeout)
        return name
