"""The gallery resource: add images (one or many), get, delete, stats."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import weakref
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from pydantic import FiniteFloat
from starlette.concurrency import run_in_threadpool

from embedders.base import batch_slices
from formats.images import ImageError
from index.crops import CropStore, CropStoreFull
from index.metadata import Limits, MetadataError, check
from index.records import Record
from server.auth import Admin, Reader
from server.deps import ReadyDep
from server.errors import APIError, error_responses
from server.schemas import AddedItem, AddResponse, DeleteResponse, GalleryItem, GalleryStats

router = APIRouter(prefix="/v1/gallery", tags=["gallery"])

ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="gallery id")]
STATS_DETAILS = ("metric", "serving", "trained", "index_type", "ntotal", "tombstones", "unsnapshotted")
SOURCE = "api"  # the client's file name is never stored or used as a path


# Kept crops (index/crops.py), one store per running app, opened on first use (it counts the kept bytes).
_crop_stores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CROP_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp")


async def _crop_store(res, *, create: bool) -> CropStore | None:
    """The app's crop store; None when there is no crops folder (and ``create`` is false) or no place for one."""
    store = _crop_stores.get(res)
    if store is not None:
        return store
    root = res.settings.crops_root
    if root is None or (not create and not root.is_dir()):
        return None
    store = await run_in_threadpool(CropStore.open, root, res.settings.crops_max_bytes)
    return _crop_stores.setdefault(res, store)


async def _keep_crops(res, blobs: list[bytes]) -> None:
    """Keep every blob or none; 507 when they would pass REID_CROPS_MAX_BYTES (the gallery is not touched)."""
    store = await _crop_store(res, create=True)
    if store is None:
        raise APIError(500, "internal_error", "REID_KEEP_CROPS is on but there is no crops folder (REID_CROPS_DIR)")
    try:
        await run_in_threadpool(store.put_many, blobs)
    except CropStoreFull as exc:
        raise APIError(507, "insufficient_storage", f"the crop store is full: {exc}") from None


def _kept_crop(store: CropStore, digest: str) -> tuple[bytes, str] | None:
    try:
        return store.get(digest)
    except ValueError:  # not a sha256 (an item added some other way): nothing was kept under it
        return None


async def _forget_crop(res, digest: str) -> None:
    """A deleted item's image goes too, unless another item holds the same bytes."""
    store = await _crop_store(res, create=False)
    if store is None:
        return
    if not await res.in_gallery(res.gallery.find_hashes, [digest]):
        await run_in_threadpool(_remove_crop, store, digest)


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
    res: ReadyDep,
    images: Annotated[list[UploadFile], File(description="one or more person crops: JPEG, PNG or WEBP")],
    person_id: Annotated[list[str], Form(description="one for all images, or one per image")],
    camera_id: Annotated[list[str] | None, Form(description="one for all images, or one per image")] = None,
    captured_at: Annotated[
        list[FiniteFloat] | None, Form(description="Unix seconds; one for all, or one per image")
    ] = None,
    track_id: Annotated[list[str] | None, Form(description="one for all images, or one per image")] = None,
    metadata: Annotated[list[str] | None, Form(description="a JSON object; one for all, or one per image")] = None,
) -> AddResponse:
    """Add person crops to the gallery. Images whose bytes are already there are reported, not added twice."""
    n = len(images)
    if n > res.settings.max_images_per_request:
        raise APIError(422, "invalid_parameters", f"at most {res.settings.max_images_per_request} images per request")
    people = _per_image(person_id, n, "person_id")
    cameras = [c or None for c in _per_image(camera_id, n, "camera_id")]  # "" means unknown
    times = _per_image(captured_at, n, "captured_at")
    tracks = [t or None for t in _per_image(track_id, n, "track_id")]
    limits = res.settings.metadata_limits
    metas = [_metadata(m, i, limits) for i, m in enumerate(_per_image(metadata, n, "metadata"))]
    if any(not p for p in people):
        raise APIError(422, "invalid_parameters", "person_id must not be empty")
    blobs = [await image.read() for image in images]
    hashes = [hashlib.sha256(b).hexdigest() for b in blobs]

    # Decode every new image before any model or gallery work: one bad image refuses the whole request.
    first_of: dict[str, int] = {}
    new = [i for i, h in enumerate(hashes) if first_of.setdefault(h, i) == i]
    pixels = []
    for i in new:
        try:
            pixels.append(await res.decode(blobs[i]))
        except ImageError as exc:
            raise exc.with_prefix(f"image {i}: ") from None
    spec = res.spec
    xb = np.zeros((0, spec.dim), np.float32)
    if pixels:
        batch = np.stack(pixels)
        xb = np.concatenate([await res.embed(batch[s]) for s in batch_slices(len(batch), spec.max_batch_size)])
    records = [
        Record(
            person_id=people[i],
            camera_id=cameras[i],
            captured_at=times[i],
            track_id=tracks[i],
            source=SOURCE,
            content_hash=hashes[i],
            metadata=metas[i],
        )
        for i in new
    ]

    if res.settings.keep_crops:  # the crops first: an item is never in the gallery without its kept crop
        await _keep_crops(res, [blobs[i] for i in new])
    stored = await res.in_gallery(res.gallery.add_new, xb, records, model_id=spec.model_id)
    res.metrics.gallery_size.set(len(res.gallery))
    id_of = {hashes[i]: gid for i, (gid, _) in zip(new, stored, strict=True)}
    fresh = {hashes[i] for i, (_, was_added) in zip(new, stored, strict=True) if was_added}
    items = [
        AddedItem(index=i, id=id_of[h], duplicate=not (h in fresh and first_of[h] == i)) for i, h in enumerate(hashes)
    ]
    added = sum(not item.duplicate for item in items)
    return AddResponse(
        model_id=spec.model_id, ids=[item.id for item in items], items=items, added=added, duplicates=n - added
    )


@router.get("", response_model=GalleryStats, responses=error_responses(401, 403, 500, 503))
async def gallery_stats(_: Reader, res: ReadyDep) -> GalleryStats:
    """Size of the gallery, the model it was built with and its faiss index type."""
    stats = await res.in_gallery(res.gallery.stats)
    details = {key: stats[key] for key in STATS_DETAILS if key in stats}  # never the folder's path
    return GalleryStats(
        count=stats["count"], model_id=stats["model_id"], dim=stats["dim"], index_type=stats["factory"], details=details
    )


@router.get("/{item_id}", response_model=GalleryItem, responses=error_responses(401, 403, 404, 422, 500, 503))
async def get_item(_: Reader, res: ReadyDep, item_id: ItemId) -> GalleryItem:
    """One gallery entry's metadata."""
    record = await res.in_gallery(res.gallery.get, item_id)
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
async def get_image(_: Reader, res: ReadyDep, item_id: ItemId) -> Response:
    """The image of one gallery entry, byte for byte as it was added: kept when the server runs with
    REID_KEEP_CROPS=true (404 for entries added without it)."""
    record = await res.in_gallery(res.gallery.get, item_id)
    if record is None:
        raise APIError(404, "not_found", f"no gallery item {item_id}")
    crops = await _crop_store(res, create=False)
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
async def delete_item(_: Admin, res: ReadyDep, item_id: ItemId) -> DeleteResponse:
    """Remove one gallery entry (its vector and its metadata)."""
    record = await res.in_gallery(res.gallery.get, item_id)
    removed = await res.in_gallery(res.gallery.remove, [item_id])
    if not removed:
        raise APIError(404, "not_found", f"no gallery item {item_id}")
    if record is not None and record.content_hash:
        await _forget_crop(res, record.content_hash)
    res.metrics.gallery_size.set(len(res.gallery))
    return DeleteResponse(id=item_id, deleted=True)
