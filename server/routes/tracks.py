"""GET /v1/tracks (tracks, paged) and GET /v1/tracks/{track_id} (one track with its items)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from index.track_records import TrackQuery
from server.auth import Reader
from server.deps import GalleryDep
from server.errors import APIError, error_responses
from server.forms import TIME_FORMS, Timestamp
from server.schemas import GalleryItem
from server.track_schemas import TrackDetail, TrackPage, TrackResult

router = APIRouter(prefix="/v1/tracks", tags=["tracks"])

MAX_PAGE = 1000
CameraQuery = Annotated[str | None, Query(min_length=1, description="only tracks of this camera")]
TimeFrom = Annotated[Timestamp | None, Query(description=f"only tracks seen at or after this time: {TIME_FORMS}")]
TimeTo = Annotated[Timestamp | None, Query(description=f"only tracks seen at or before this time: {TIME_FORMS}")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="at most this many per page")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]


def track_query(camera_id: str | None, time_from: float | None, time_to: float | None) -> TrackQuery:
    if time_from is not None and time_to is not None and time_from > time_to:
        raise APIError(400, "invalid_parameters", "time_from is after time_to")
    return TrackQuery(camera_id=camera_id, time_from=time_from, time_to=time_to)


def cursor_position(cursor: str | None) -> int:
    """The position a cursor stands for (a page's last track or identity); 0 before the first page."""
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise APIError(400, "invalid_parameters", "cursor: pass the next_cursor of a previous page")
    return int(cursor)


@router.get("", response_model=TrackPage, responses=error_responses(400, 401, 403, 422, 500, 503))
async def list_tracks(
    _: Reader,
    gallery: GalleryDep,
    camera_id: CameraQuery = None,
    time_from: TimeFrom = None,
    time_to: TimeTo = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> TrackPage:
    """The gallery's tracks (items that share a track_id), in the order they were first stored; a track is in a
    time window when its span overlaps it. An empty list when the gallery holds no tracks."""
    query = track_query(camera_id, time_from, time_to)
    after = cursor_position(cursor)
    found = await gallery.read(gallery.gallery.tracks, query, after=after, limit=limit + 1)
    page = found[:limit]
    more = len(found) > limit
    return TrackPage(tracks=[TrackResult.of(t) for t in page], next_cursor=str(page[-1].seq) if more else None)


@router.get("/{track_id:path}", response_model=TrackDetail, responses=error_responses(401, 403, 404, 422, 500, 503))
async def get_track(
    _: Reader, gallery: GalleryDep, track_id: Annotated[str, Path(min_length=1, description="the track's id")]
) -> TrackDetail:
    """One track and its items with their metadata (frame, box, score, quality where footage stored them)."""
    track = (await gallery.read(gallery.gallery.tracks_of, [track_id])).get(track_id)
    if track is None:
        raise APIError(404, "not_found", f"no track {track_id!r}")
    ids = await gallery.read(gallery.gallery.track_items, track_id)
    records = await gallery.read(gallery.gallery.records, ids)
    items = [GalleryItem.of(records[i]) for i in ids if i in records]
    return TrackDetail(**TrackResult.of(track).model_dump(), items=items)
