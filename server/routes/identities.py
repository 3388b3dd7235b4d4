"""GET /v1/identities (identities linking made, paged), GET /v1/identities/{identity_id} (a person's timeline) and
POST /v1/identities/link (link the served gallery's tracks now, as python -m ingestion.link does)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Path

from ingestion.linking import DEFAULT_FAR, link_gallery
from server.auth import Admin, Reader
from server.deps import GalleryDep
from server.errors import APIError, error_responses
from server.routes.tracks import CameraQuery, Cursor, Limit, TimeFrom, TimeTo, cursor_position, track_query
from server.track_schemas import IdentityPage, IdentityResultSummary, LinkResult, Timeline, TimelineEntry

router = APIRouter(prefix="/v1/identities", tags=["identities"])


@router.get("", response_model=IdentityPage, responses=error_responses(400, 401, 403, 422, 500, 503))
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


@router.get("/{identity_id:int}", response_model=Timeline, responses=error_responses(401, 403, 404, 422, 500, 503))
async def get_identity(
    _: Reader, gallery: GalleryDep, identity_id: Annotated[int, Path(ge=1, le=2**63 - 1, description="identity")]
) -> Timeline:
    """One person's timeline: where and when each of their tracks was seen, in time order."""
    tracks = await gallery.read(gallery.gallery.identity_tracks, identity_id)
    if not tracks:
        raise APIError(404, "not_found", f"no identity {identity_id}")
    return Timeline(identity_id=identity_id, timeline=[TimelineEntry.of(t) for t in tracks])


@router.post("/link", response_model=LinkResult, responses=error_responses(401, 403, 422, 500, 503))
async def link_tracks(
    _: Admin,
    gallery: GalleryDep,
    # "true"/"false" only: a lax bool would take "0", "off" or "no" too, which the schema cannot say
    full: Annotated[
        Literal["true", "false"],
        Form(description="true: relink every track (default: only tracks without an identity)"),
    ] = "false",
    far: Annotated[float, Form(gt=0, lt=1, description="the false-link rate the threshold is set for")] = DEFAULT_FAR,
) -> LinkResult:
    """Link the gallery's tracks into identities on the server's writer thread (writes wait; searches do not):
    the way to link an embedded gallery the server holds, which python -m ingestion.link cannot open meanwhile.
    The camera topology is learned from confident links (give a file to python -m ingestion.link instead)."""
    run = await gallery.write(link_gallery, gallery.gallery, far=far, full=full == "true")
    body = run.to_dict()
    note = None if run.report is None else run.report.note
    return LinkResult(**{k: body[k] for k in LinkResult.model_fields if k in body}, note=note)
