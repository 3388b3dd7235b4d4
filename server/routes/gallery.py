"""The gallery resource: add images (one or many), get, delete, stats."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from index.crops import CropStore, CropStoreFull
from index.metadata import Limits, MetadataError, check
from index.records import Record
from ingestion.pipeline import Item, Result, WritePipeline
from server.auth import Admin, Reader
from server.deps import EmbedderDep, GalleryDep, SettingsDep
from server.errors import APIError, ErrorDetail, error_responses, error_status
from server.forms import TIME_FORMS, JsonObjectText, NonEmpty, Timestamp
from server.resources import in_threadpool
from server.schemas import AddedItem, AddResponse, DeleteResponse, GalleryItem, GalleryStats

router = APIRouter(prefix="/v1/gallery", tags=["gallery"])

ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="gallery id")]
STATS_DETAILS = ("metric", "serving", "trained", "index_type", "ntotal", "tombstones", "unsnapshotted", "index_choice")
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
        raise APIError(400, "invalid_parameters", f"{name}: give one value for all images or one per image ({n})")
    return values


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid in metadata")  # NaN and Infinity would break every later JSON answer


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _parse_json(text: str, what: str) -> object:
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise APIError(422, "invalid_parameters", f"{what} is not valid JSON") from None


def _metadata_fields(values: list[str] | None) -> list | None:
    """The metadata fields as sent: one text per field, or one JSON array holding an object per image (how an
    OpenAPI client sends an array of objects in a multipart form)."""
    if values and len(values) == 1 and values[0].lstrip().startswith("["):
        array = _parse_json(values[0], "metadata")
        if isinstance(array, list) and array and all(isinstance(m, dict) for m in array):
            return array
    return values


def _metadata(given: str | dict | None, i: int, limits: Limits) -> dict:
    """The metadata of image ``i`` (its JSON text, or an object from an array) as a dict within ``limits`` (the
    settings' metadata_max_*)."""
    if given is None or (isinstance(given, str) and given.strip() in ("", "null")):  # no metadata, as if absent
        return {}
    value = _parse_json(given, f"metadata of image {i}") if isinstance(given, str) else given
    if not isinstance(value, dict):
        raise APIError(422, "invalid_parameters", f"metadata of image {i} must be a JSON object")
    try:
        check(value, limits)
    except MetadataError as exc:
        raise APIError(400, "invalid_parameters", f"metadata of image {i}: {exc}") from None
    return value


PARTIAL_DOC = (
    "some images were added (or found already there) and others refused: each refused item has its error; "
    "nothing is retried and the added ones stay"
)


@router.post(
    "",
    status_code=201,
    response_model=AddResponse,
    responses={
        207: {"model": AddResponse, "description": PARTIAL_DOC},
        **error_responses(400, 401, 403, 413, 415, 422, 500, 502, 503, 504, 507),
    },
)
async def add_images(
    _: Admin,
    settings: SettingsDep,
    model: EmbedderDep,
    gallery: GalleryDep,
    response: Response,
    images: Annotated[list[UploadFile], File(min_length=1, description="one or more person crops: JPEG, PNG or WEBP")],
    person_id: Annotated[
        list[NonEmpty], Form(description="one for all images, or one per image; none for crops of unknown people")
    ] = None,
    camera_id: Annotated[list[str], Form(description="one for all images, or one per image")] = None,
    captured_at: Annotated[
        list[Timestamp], Form(description=f"{TIME_FORMS}; one for all images, or one per image")
    ] = None,
    track_id: Annotated[list[str], Form(description="one for all images, or one per image")] = None,
    metadata: Annotated[list[JsonObjectText], Form(description="a JSON object; one for all, or one per image")] = None,
) -> AddResponse:
    """Add person crops to the gallery. Images whose bytes are already there are reported, not added twice. An
    image that cannot be used (undecodable, not JPEG/PNG/WEBP, too small...) is refused alone: the others are
    added, the answer is 207 and that item carries its error. When every image is refused, the answer is the
    first one's error status (400, 415 or 422), its message naming each image and why."""
    items = await _items(settings, images, person_id, camera_id, captured_at, track_id, metadata)
    results = await _write(settings, model, gallery, items)
    gallery.count_items()
    failed = [(i, r.error) for i, r in enumerate(results) if r.error is not None]
    if failed and len(failed) == len(results):
        status, code = error_status(failed[0][1])
        reasons = "; ".join(f"image {i}: {error.message}" for i, error in failed)
        raise APIError(status, code, f"no image was added ({reasons})")
    if failed:
        response.status_code = 207
    added = sum(r.added for r in results)
    return AddResponse(
        model_id=model.spec.model_id,
        ids=[r.id for r in results],
        items=[
            AddedItem(
                index=i,
                id=r.id,
                duplicate=r.duplicate,
                error=None if r.error is None else ErrorDetail(code=r.error.code, message=r.error.message),
            )
            for i, r in enumerate(results)
        ],
        added=added,
        duplicates=sum(r.duplicate for r in results),
        failed=len(failed),
    )


async def _items(
    settings: SettingsDep,
    images: list[UploadFile],
    person_id: list[str] | None,
    camera_id: list[str] | None,
    captured_at: list[float] | None,
    track_id: list[str] | None,
    metadata: list[str] | None,
) -> list[Item]:
    """The request's images with their records; a field with the wrong count or bad metadata refuses them all."""
    n = len(images)
    if n > settings.max_images_per_request:
        raise APIError(400, "invalid_parameters", f"at most {settings.max_images_per_request} images per request")
    people = _per_image(person_id, n, "person_id")
    cameras = [c or None for c in _per_image(camera_id, n, "camera_id")]  # "" means unknown
    times = _per_image(captured_at, n, "captured_at")
    tracks = [t or None for t in _per_image(track_id, n, "track_id")]
    metas = _per_image(_metadata_fields(metadata), n, "metadata")
    metas = [_metadata(m, i, settings.metadata_limits) for i, m in enumerate(metas)]
    if any(p is not None and not p for p in people):
        raise APIError(422, "invalid_parameters", "person_id must not be empty")
    return [
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


async def _write(settings: SettingsDep, model: EmbedderDep, gallery: GalleryDep, items: list[Item]) -> list[Result]:
    """The one write pipeline: an image that cannot be used is that item's error, the others are added; with
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
        run_blocking=in_threadpool,
        run_read=gallery.read,
        run_write=gallery.write,
    )
    try:
        return await writes.add(items)
    except CropStoreFull as exc:
        raise APIError(507, "insufficient_storage", f"the crop store is full: {exc}") from None


@router.get("", response_model=GalleryStats, responses=error_responses(401, 403, 500, 503))
async def gallery_stats(_: Reader, gallery: GalleryDep, model: EmbedderDep) -> GalleryStats:
    """Size of the gallery, the model it was built with and its faiss index type."""
    stats = await gallery.read(gallery.gallery.stats)
    details = {key: stats[key] for key in STATS_DETAILS if key in stats}  # never the folder's path
    return GalleryStats(
        count=stats["count"],
        model_id=stats["model_id"],
        dim=stats["dim"],
        index_type=stats["factory"],
        variant=model.variant,
        details=details,
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
