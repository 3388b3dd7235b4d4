"""POST /v1/search (image -> identities and hits) and POST /v1/embed (image -> vector)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Response, UploadFile

from index.records import Hit, SearchFilter, aggregate_identities
from server.auth import Reader
from server.deps import EmbedderDep, GalleryDep, MetricsDep, SettingsDep
from server.errors import APIError, error_responses
from server.forms import LIST_FORMS, MAX_FILTER_VALUES, Timestamp, ValueList
from server.schemas import EmbedResponse, IdentityResult, SearchHit, Timings
from server.settings import MAX_TOP_K
from server.track_search import MAX_QUERY_IMAGES, TrackSearchResponse, embed_query, tracks_of_hits
from server.verdict import VerdictCache

router = APIRouter(prefix="/v1", tags=["search"])

ImageUpload = Annotated[UploadFile, File(description="the query crop: JPEG, PNG or WEBP (recognised by content)")]
QueryImages = Annotated[
    list[UploadFile],
    File(
        min_length=1,
        description=f"the query crop, or up to {MAX_QUERY_IMAGES} crops of one person (one query: their mean)",
    ),
]
LISTS = f"{LIST_FORMS}; at most {MAX_FILTER_VALUES} values"


Cameras = Annotated[ValueList, Form(description=f"only hits from these cameras: {LISTS}")]
ExcludeCameras = Annotated[ValueList, Form(description=f"no hits from these cameras: {LISTS}")]
PersonIds = Annotated[ValueList, Form(description=f"only hits of these people: {LISTS}")]
UPLOAD_ERRORS = (400, 401, 403, 413, 415, 422, 500, 502, 503, 504)
_verdicts = VerdictCache()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _server_timing(timings: Timings) -> str:
    return f"decode;dur={timings.decode_ms}, embed;dur={timings.embed_ms}, search;dur={timings.search_ms}"


async def _embed_upload(model: EmbedderDep, image: UploadFile) -> tuple[np.ndarray, float, float]:
    """One upload -> its embedding (1, D), with decode and embed seconds."""
    t0 = time.perf_counter()
    rgb = await model.decode(await image.read(), inline=True)  # small uploads are in memory: no file, no thread
    t1 = time.perf_counter()
    xq = await model.embed(rgb[None])
    return xq, t1 - t0, time.perf_counter() - t1


@router.post("/search", response_model=TrackSearchResponse, responses=error_responses(*UPLOAD_ERRORS))
async def search(
    _: Reader,
    settings: SettingsDep,
    model: EmbedderDep,
    gallery: GalleryDep,
    metrics: MetricsDep,
    response: Response,
    image: QueryImages,
    top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K, description="hits to return")] = 10,
    cameras: Cameras = None,
    exclude_cameras: ExcludeCameras = None,
    person_ids: PersonIds = None,
    time_from: Annotated[Timestamp, Form(description="hits captured at or after this time")] = None,
    time_to: Annotated[Timestamp, Form(description="hits captured at or before this time")] = None,
    query_camera: Annotated[
        str, Form(description="the query's camera: its matches are dropped (the Market-1501 protocol)")
    ] = None,
    group_by: Annotated[
        Literal["track"], Form(description="track: also answer the tracks among the hits, best first (tracks)")
    ] = None,
) -> TrackSearchResponse:
    """Find the gallery identities closest to a person crop."""
    if top_k > settings.max_top_k:
        raise APIError(400, "invalid_parameters", f"top_k: at most {settings.max_top_k}")
    if time_from is not None and time_to is not None and time_from > time_to:
        raise APIError(400, "invalid_parameters", "time_from is after time_to")
    excluded = set(exclude_cameras or [])
    if query_camera is not None:
        excluded.add(query_camera)
    filters = SearchFilter(
        cameras=frozenset(cameras or ()) or None,
        exclude_cameras=frozenset(excluded) or None,
        person_ids=frozenset(person_ids or ()) or None,
        time_from=time_from,
        time_to=time_to,
    )
    xq, decode_s, embed_s = await embed_query(model, image)
    spec = model.spec
    t0 = time.perf_counter()
    hits = (await gallery.search(xq, top_k, filters, model_id=spec.model_id))[0]
    search_s = time.perf_counter() - t0
    metrics.search_latency.observe(search_s)

    unmatched = await _unmatched(gallery, xq, hits, cameras, exclude_cameras, person_ids, spec.model_id)
    identities = aggregate_identities(hits)
    target_far = settings.target_far
    basis = _verdicts.get(spec, gallery.gallery.calibration(), target_far)
    timings = Timings(decode_ms=_ms(decode_s), embed_ms=_ms(embed_s), search_ms=_ms(search_s))
    response.headers["Server-Timing"] = _server_timing(timings)
    return TrackSearchResponse(
        model_id=spec.model_id,
        verdict=basis.verdict(identities),
        threshold=basis.threshold,
        target_far=target_far,
        calibration=basis.calibration,
        identities=[IdentityResult.of(i) for i in identities],
        hits=[SearchHit.of(h) for h in hits],
        timings=timings,
        tracks=await tracks_of_hits(gallery, hits) if group_by == "track" else None,
        unmatched_filters=unmatched,
    )


async def _unmatched(
    gallery: GalleryDep,
    xq: np.ndarray,
    hits: list[Hit],
    cameras: list[str] | None,
    exclude_cameras: list[str] | None,
    person_ids: list[str] | None,
    model_id: str,
) -> dict[str, list[str]]:
    """The filter values no gallery item has (a mistyped camera or person), by filter name.

    A value seen among the hits exists; each other one costs a search for one hit with that value alone (the
    gallery's filtered search, in faiss or Milvus), so a search whose filter values all appear pays nothing."""
    seen_cameras = {h.record.camera_id for h in hits}
    seen_people = {h.record.person_id for h in hits}
    asked = {
        "cameras": (cameras, seen_cameras, "cameras"),
        "exclude_cameras": (exclude_cameras, set(), "cameras"),
        "person_ids": (person_ids, seen_people, "person_ids"),
    }
    unmatched: dict[str, list[str]] = {}
    for name, (values, seen, column) in asked.items():
        missing = [v for v in values or () if v not in seen and not await _exists(gallery, xq, column, v, model_id)]
        if missing:
            unmatched[name] = missing
    return unmatched


async def _exists(gallery: GalleryDep, xq: np.ndarray, column: str, value: str, model_id: str) -> bool:
    one_value: dict[str, Any] = {column: [value]}  # column: cameras, exclude_cameras or person_ids
    only = SearchFilter(**one_value)
    return bool((await gallery.search(xq, 1, only, model_id=model_id))[0])


@router.post("/embed", response_model=EmbedResponse, responses=error_responses(*UPLOAD_ERRORS))
async def embed(_: Reader, model: EmbedderDep, response: Response, image: ImageUpload) -> EmbedResponse:
    """The L2-normalised embedding of a person crop."""
    xq, decode_s, embed_s = await _embed_upload(model, image)
    timings = Timings(decode_ms=_ms(decode_s), embed_ms=_ms(embed_s))
    response.headers["Server-Timing"] = _server_timing(timings)
    return EmbedResponse(model_id=model.spec.model_id, dim=model.spec.dim, embedding=xq[0].tolist(), timings=timings)
