"""The gallery resource: add images (one or many), get, delete, stats."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from pydantic import FiniteFloat
from starlette.concurrency import run_in_threadpool

from index.crops import CropStore, CropStoreFull
from index.metadata import Limits, MetadataError, check
from index.records import Record
from ingestion.pipeline import Item, Result, WritePipeline
from server.auth import Admin, Reader
from server.deps import EmbedderDep, GalleryDep, SettingsDep
from server.errors import APIError, error_responses
from server.resources import in_threadpool
from server.schemas import AddedItem, AddResponse, DeleteResponse, GalleryItem, GalleryStats

router = APIRouter(prefix="/v1/gallery", tags=["gallery"])

ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="gallery id")]
STATS_DETAILS = ("metric", "serving", "trained", "index_type", "ntotal", "tombstones", "unsnapshotted")
SOURCE = "api"  # the client's file name is never stored or used as a path
CROP_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp")


def _kept_crop(store: CropStore, digest: str) -> tuple[bytes, str] | None:
    try:
        return store.get(digest)
    except ValueError:  # not a sha256 (an item added some other way): nothing was kept under it
        return None


async def _forget_crop(gallery: GalleryDep, digest: str) -> None:
    """A deleted item's image goes too, unless another item holds the same bytes."""
    store = await gallery.crop_store(create=False)
    if store is None:
        return
    if not await gallery.read(gallery.gallery.find_hashes, [digest]):
        await gallery.write(_remove_crop, store, digest)


def _remove_crop(store: CropStore, digest: str) -> None:
    with contextlib.suppress(ValueError):  # not a sha256: nothing was kept under it
        store.remove(digest)


def _per_image(values: list | None, n: int, name: str) -> list:
    """A form field given once (for every image) or once per image."""
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise APIError(422, "invalid_parameters", f"{name}: give one value for all images or one per image ({n})")
    return values


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid in metadata")  # NaN and Infinity would break every later JSON answer


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _metadata(text: str | None, i: int, limits: Limits) -> dict:
    """The metadata form field of image ``i`` as a dict within ``limits`` (the settings' metadata_max_*)."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise APIError(422, "invalid_parameters", f"metadata of image {i} is not valid JSON") from None
    if not isinstance(value, dict):
        raise APIError(422, "invalid_parameters", f"metadata of image {i} must be a JSON object")
    try:
        check(value, limits)
    except MetadataError as exc:
        raise APIError(422, "invalid_parameters", f"metadata of image {i}: {exc}") from None
    return value


@router.post(
    "",
    status_code=201,
    response_model=AddResponse,
    responses=error_responses(400, 401, 403, 413, 415, 422, 500, 502, 503, 504, 507),
)
async def add_images(
    _: Admin,
    settings: SettingsDep,
    model: EmbedderDep,
    gallery: GalleryDep,
    images: Annotated[list[UploadFile], File(description="one or more person crops: JPEG, PNG or WEBP")],
    person_id: Annotated[list[str], Form(description="one for all images, or one per image")],
    camera_id: Annotated[list[str] | None, Form(description="one for all images, or one per image")] = None,
    captured_at: Annotated[
        list[FiniteFloat] | None, Form(description="Unix seconds; one for all, or one per image")
    ] = None,
    track_id: Annotated[list[str] | None, Form(description="one for all images, or one per image")] = None,
    metadata: Annotated[list[str] | None, Form(description="a JSON object; one for all, or one per image")] = None,
) -> AddResponse:
    """Add person crops to the gallery. Images whose bytes are already there are reported, not added twice; one
    image that cannot be decoded refuses the whole request, with nothing added."""
    n = len(images)
    if n > settings.max_images_per_request:
        raise APIError(422, "invalid_parameters", f"at most {settings.max_images_per_request} images per request")
    people = _per_image(person_id, n, "person_id")
    cameras = [c or None for c in _per_image(camera_id, n, "camera_id")]  # "" means unknown
    times = _per_image(captured_at, n, "captured_at")
    tracks = [t or None for t in _per_image(track_id, n, "track_id")]
    metas = [_metadata(m, i, settings.metadata_limits) for i, m in enumerate(_per_image(metadata, n, "metadata"))]
    if any(not p for p in people):
        raise APIError(422, "invalid_parameters", "person_id must not be empty")
    items = [
        Item(
            f"image {i}",
            await image.read(),
            Record(
                person_id=people[i],
                camera_id=cameras[i],
                captured_at=times[i],
                track_id=tracks[i],
                source=SOURCE,
                metadata=metas[i],
            ),
        )
        for i, image in enumerate(images)
    ]
    results = await _write(settings, model, gallery, items)
    gallery.count_items()
    added = sum(r.added for r in results)
    return AddResponse(
        model_id=model.spec.model_id,
        ids=[r.id for r in results],
        items=[AddedItem(index=i, id=r.id, duplicate=r.duplicate) for i, r in enumerate(results)],
        added=added,
        duplicates=n - added,
    )


async def _write(settings: SettingsDep, model: EmbedderDep, gallery: GalleryDep, items: list[Item]) -> list[Result]:
    """The one write pipeline, all or nothing (the first bad image's typed error is the answer); with
    REID_KEEP_CROPS, every image's bytes are kept before its add, and 507 when they would pass the store's cap."""
    crops = None
    if settings.keep_crops:
        crops = await gallery.crop_store(create=True)
        if crops is None:
            raise APIError(500, "internal_error", "REID_KEEP_CROPS is on but there is no crops folder (REID_CROPS_DIR)")
    writes = WritePipeline(
        gallery.gallery,
        model,
        crops=crops,
        limits=settings.image_limits,
        atomic=True,
        run_blocking=in_threadpool,
        run_read=gallery.read,
        run_write=gallery.write,
    )
    try:
        return await writes.add(items)
    except CropStoreFull as exc:
        raise APIError(507, "insufficient_storage", f"the crop store is full: {exc}") from None


@router.get("", response_model=GalleryStats, responses=error_responses(401, 403, 500, 503))
async def gallery_stats(_: Reader, gallery: GalleryDep) -> GalleryStats:
    """Size of the gallery, the model it was built with and its faiss index type."""
    stats = await gallery.read(gallery.gallery.stats)
    details = {key: stats[key] for key in STATS_DETAILS if key in stats}  # never the folder's path
    return GalleryStats(
        count=stats["count"], model_id=stats["model_id"], dim=stats["dim"], index_type=stats["factory"], details=details
    )


@router.get("/{item_id}", response_model=GalleryItem, responses=error_responses(401, 403, 404, 422, 500, 503))
async def get_item(_: Reader, gallery: GalleryDep, item_id: ItemId) -> GalleryItem:
    """One gallery entry's metadata."""
    record = await gallery.read(gallery.gallery.get, item_id)
    if record is None:
        raise APIError(404, "not_found", f"no gallery item {item_id}")
    return GalleryItem.of(record)


@router.get(
    "/{item_id}/image",
    response_class=Response,
    responses={
        200: {"content": {media: {} for media in CROP_MEDIA_TYPES}, "description": "the image as it was added"},
        **error_responses(401, 403, 404, 422, 500, 503),
    },
)
async def get_image(_: Reader, gallery: GalleryDep, item_id: ItemId) -> Response:
    """The image of one gallery entry, byte for byte as it was added: kept when the server runs with
    REID_KEEP_CROPS=true (404 for entries added without it)."""
    record = await gallery.read(gallery.gallery.get, item_id)
    if record is None:
        raise APIError(404, "not_found", f"no gallery item {item_id}")
    crops = await gallery.crop_store(create=False)
    kept = None
    if crops is not None and record.content_hash:
        kept = await run_in_threadpool(_kept_crop, crops, record.content_hash)
    if kept is None:
        raise APIError(404, "not_found", f"gallery item {item_id} has no kept image")
    data, media_type = kept
    # Content-addressed: the bytes under this id never change, so a client may keep them.
    headers = {"ETag": f'"{record.content_hash}"', "Cache-Control": "private, max-age=86400"}
    return Response(data, media_type=media_type, headers=headers)


@router.delete("/{item_id}", response_model=DeleteResponse, responses=error_responses(401, 403, 404, 422, 500, 503))
async def delete_item(_: Admin, gallery: GalleryDep, item_id: ItemId) -> DeleteResponse:
    """Remove one gallery entry (its vector and its metadata)."""
    record = await gallery.read(gallery.gallery.get, item_id)
    removed = await gallery.write(gallery.gallery.remove, [item_id])
    if not removed:
        raise APIError(404, "not_found", f"no gallery item {item_id}")
    if record is not None and record.content_hash:
        await _forget_crop(gallery, record.content_hash)
    gallery.count_items()
    return DeleteResponse(id=item_id, deleted=True)
