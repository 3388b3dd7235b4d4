"""GET /v1/identities (identities linking made, paged) and GET /v1/identities/{identity_id} (a person's timeline)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from server.auth import Reader
from server.deps import GalleryDep
from server.errors import APIError, error_responses
from server.routes.tracks import CameraQuery, Cursor, Limit, TimeFrom, TimeTo, cursor_position, track_query
from server.track_schemas import IdentityPage, IdentityResultSummary, Timeline, TimelineEntry

router = APIRouter(prefix="/v1/identities", tags=["identities"])


@router.get("", response_model=IdentityPage, responses=error_responses(401, 403, 422, 500, 503))
async def list_identities(
    _: Reader,
    gallery: GalleryDep,
    camera_id: CameraQuery = None,
    time_from: TimeFrom = None,
    time_to: TimeTo = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> IdentityPage:
    """Identities (python -m ingestion.link) with a track that passes the filters, in identity order, each
    summarised over all its tracks. An empty list when nothing is linked yet."""
    query = track_query(camera_id, time_from, time_to)
    after = cursor_position(cursor)
    found = await gallery.read(gallery.gallery.identities, query, after=after, limit=limit + 1)
    page = found[:limit]
    more = len(found) > limit
    return IdentityPage(
        identities=[IdentityResultSummary.of(s) for s in page],
        next_cursor=str(page[-1].identity_id) if more else None,
    )


@router.get("/{identity_id}", response_model=Timeline, responses=error_responses(401, 403, 404, 422, 500, 503))
async def get_identity(
    _: Reader, gallery: GalleryDep, identity_id: Annotated[int, Path(ge=1, le=2**63 - 1, description="identity")]
) -> Timeline:
    """One person's timeline: where and when each of their tracks was seen, in time order."""
    tracks = await gallery.read(gallery.gallery.identity_tracks, identity_id)
    if not tracks:
        raise APIError(404, "not_found", f"no identity {identity_id}")
    return Timeline(identity_id=identity_id, timeline=[TimelineEntry.of(t) for t in tracks])
