"""JSON bodies of the track and identity routes (server.routes.tracks, server.routes.identities) and of a search
grouped by track."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from index.track_records import IdentitySummary, Track
from server.schemas import GalleryItem

TIME_DOC = "Unix seconds"


class TrackResult(BaseModel):
    track_id: str
    camera_id: str | None
    first_seen: float | None = Field(description=f"{TIME_DOC}: the earliest capture time of its items")
    last_seen: float | None = Field(description=f"{TIME_DOC}: the latest capture time of its items")
    n_items: int
    best_item_id: int = Field(description="its item of highest quality (a thumbnail: GET /v1/gallery/{id}/image)")
    identity_id: int | None = Field(description="the identity linking gave it (python -m ingestion.link); null before")

    @classmethod
    def of(cls, t: Track) -> TrackResult:
        return cls(
            track_id=t.track_id,
            camera_id=t.camera_id,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            n_items=t.n_items,
            best_item_id=t.best_item_id,
            identity_id=t.identity_id,
        )


class TrackPage(BaseModel):
    tracks: list[TrackResult]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class TrackDetail(TrackResult):
    items: list[GalleryItem] = Field(description="its items with their metadata (frame, box, score...), in id order")


class SearchTrack(TrackResult):
    score: float = Field(description="the best score among the track's hits")


class IdentityResultSummary(BaseModel):
    identity_id: int
    first_seen: float | None
    last_seen: float | None
    n_tracks: int
    cameras: list[str]

    @classmethod
    def of(cls, s: IdentitySummary) -> IdentityResultSummary:
        return cls(
            identity_id=s.identity_id,
            first_seen=s.first_seen,
            last_seen=s.last_seen,
            n_tracks=s.n_tracks,
            cameras=list(s.cameras),
        )


class IdentityPage(BaseModel):
    identities: list[IdentityResultSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class TimelineEntry(BaseModel):
    camera_id: str | None
    first_seen: float | None
    last_seen: float | None
    track_id: str
    best_item_id: int
    n_items: int

    @classmethod
    def of(cls, t: Track) -> TimelineEntry:
        return cls(
            camera_id=t.camera_id,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            track_id=t.track_id,
            best_item_id=t.best_item_id,
            n_items=t.n_items,
        )


class Timeline(BaseModel):
    identity_id: int
    timeline: list[TimelineEntry] = Field(description="the identity's tracks in time order")


class LinkResult(BaseModel):
    """What a linking run did (ingestion.linking.LinkRun)."""

    mode: Literal["incremental", "full"]
    tracks: int = Field(description="tracks the gallery holds")
    untimed: int = Field(description="tracks left out: none of their items has a capture time")
    assigned: int = Field(description="tracks whose identity this run set or changed")
    identities: int = Field(description="identities among the linked tracks after the run")
    threshold: float = Field(description="the track similarity two tracks had to reach to be linked")
    threshold_source: str = Field(description="where the threshold came from")
    far: float = Field(description="the false-link rate the threshold was set for")
    note: str | None = Field(None, description="the clustering's one-line summary")
    topology: dict[str, Any] | None = Field(description="camera pairs with transit seconds, given or learned")
    changes: dict[str, Any] | None = Field(description="full runs: identities unchanged, merged, split, new, gone")
