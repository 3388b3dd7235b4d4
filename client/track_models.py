"""Typed tracks, identities and timelines, parsed from the API's JSON (GET /v1/tracks, /v1/identities); unknown
fields are ignored, as in client.models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from client.models import GalleryItem

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _parse(cls: type[T], data: dict) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Track:
    track_id: str
    camera_id: str | None
    first_seen: float | None
    last_seen: float | None
    n_items: int
    best_item_id: int
    identity_id: int | None = None
    score: float | None = None  # in a search grouped by track

    @classmethod
    def from_json(cls, data: dict) -> Track:
        return _parse(cls, data)


@dataclass(frozen=True)
class TrackPage:
    tracks: list[Track]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: dict) -> TrackPage:
        return cls([Track.from_json(t) for t in data["tracks"]], data.get("next_cursor"))


@dataclass(frozen=True)
class TrackDetail:
    track: Track
    items: list[GalleryItem] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> TrackDetail:
        return cls(Track.from_json(data), [GalleryItem.from_json(i) for i in data.get("items", [])])


@dataclass(frozen=True)
class IdentitySummary:
    identity_id: int
    first_seen: float | None
    last_seen: float | None
    n_tracks: int
    cameras: list[str]

    @classmethod
    def from_json(cls, data: dict) -> IdentitySummary:
        return _parse(cls, data)


@dataclass(frozen=True)
class IdentityPage:
    identities: list[IdentitySummary]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: dict) -> IdentityPage:
        return cls([IdentitySummary.from_json(i) for i in data["identities"]], data.get("next_cursor"))


@dataclass(frozen=True)
class TimelineEntry:
    camera_id: str | None
    first_seen: float | None
    last_seen: float | None
    track_id: str
    best_item_id: int
    n_items: int = 0


@dataclass(frozen=True)
class Timeline:
    identity_id: int
    timeline: list[TimelineEntry]

    @classmethod
    def from_json(cls, data: dict) -> Timeline:
        return cls(data["identity_id"], [_parse(TimelineEntry, e) for e in data["timeline"]])
