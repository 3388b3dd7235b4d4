"""Plain data of tracks and identities, shared by both backends (index.tracks, index.milvus_tracks).

A track is the items that share a ``track_id`` (footage gives each tracked person one; an HTTP add may give one):
its camera (the first item's), first and last capture time, how many items it holds, its best item (highest
quality, the lowest id among equals), its running feature and the identity linking gave it. An item's quality
is its metadata's ``quality`` (what the footage path measures: detector score, size, sharpness, cover, frame
edge), else 1: crops added without one weigh the same. The track's feature is the quality-weighted mean of its
items' vectors, re-normalised (ingestion.track_features); the plain mean where every quality is 0.

Identities are numbers given out by the gallery, increasing and never reused (an erased identity's number stays
spent), set on tracks by linking (ingestion.link).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-12


@dataclass(frozen=True)
class Track:
    track_id: str
    camera_id: str | None
    first_seen: float | None  # Unix seconds: the earliest capture time of its items (None: none has one)
    last_seen: float | None
    n_items: int
    best_item_id: int
    identity_id: int | None
    seq: int  # paging order: the order tracks were first stored in


@dataclass(frozen=True)
class IdentitySummary:
    identity_id: int
    first_seen: float | None
    last_seen: float | None
    n_tracks: int
    cameras: tuple[str, ...]


@dataclass(frozen=True)
class TrackQuery:
    """Keep tracks on ``camera_id`` (if given) seen within [time_from, time_to] (their span overlaps it; a track
    without capture times fails a time window), with ``identity_id`` (if given)."""

    camera_id: str | None = None
    time_from: float | None = None
    time_to: float | None = None
    identity_id: int | None = None


def item_quality(metadata: dict | None) -> float:
    """The weight of an item in its track's feature: metadata ``quality`` when it is a finite number >= 0, else 1."""
    q = (metadata or {}).get("quality")
    if isinstance(q, int | float) and not isinstance(q, bool) and math.isfinite(q) and q >= 0:
        return float(q)
    return 1.0


def feature(wsum: np.ndarray, xsum: np.ndarray, weight: float) -> np.ndarray:
    """The track's vector from its running sums: the weighted mean, or the plain one when every weight is 0."""
    v = np.asarray(wsum if weight > 0 else xsum, dtype=np.float64)
    return (v / max(float(np.linalg.norm(v)), EPS)).astype(np.float32)


def matches(track: Track, query: TrackQuery | None) -> bool:
    if query is None:
        return True
    if query.camera_id is not None and track.camera_id != query.camera_id:
        return False
    if query.identity_id is not None and track.identity_id != query.identity_id:
        return False
    if query.time_from is not None or query.time_to is not None:
        if track.first_seen is None or track.last_seen is None:
            return False
        if query.time_from is not None and track.last_seen < query.time_from:
            return False
        if query.time_to is not None and track.first_seen > query.time_to:
            return False
    return True


def summarise(tracks: list[Track]) -> list[IdentitySummary]:
    """One summary per identity among ``tracks`` (tracks without one left out), in identity order."""
    by_id: dict[int, list[Track]] = {}
    for t in tracks:
        if t.identity_id is not None:
            by_id.setdefault(t.identity_id, []).append(t)
    out = []
    for ident in sorted(by_id):
        group = by_id[ident]
        firsts = [t.first_seen for t in group if t.first_seen is not None]
        lasts = [t.last_seen for t in group if t.last_seen is not None]
        cams = tuple(sorted({t.camera_id for t in group if t.camera_id is not None}))
        out.append(IdentitySummary(ident, min(firsts, default=None), max(lasts, default=None), len(group), cams))
    return out


def timeline_order(tracks: list[Track]) -> list[Track]:
    """Tracks in time order (tracks without times last, then by storage order)."""
    return sorted(tracks, key=lambda t: (t.first_seen is None, t.first_seen or 0.0, t.seq))
