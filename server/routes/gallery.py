"""The gallery resource: add images (one or many), get, delete, stats."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Path, UploadFile
from pydantic import FiniteFloat

from embedders.base import batch_slices
from formats.images import ImageError
from index.records import Record
from server.auth import Admin, Reader
from server.deps import ReadyDep
from server.errors import APIError, error_responses
from server.schemas import AddedItem, AddResponse, DeleteResponse, GalleryItem, GalleryStats

router = APIRouter(prefix="/v1/gallery", tags=["gallery"])

ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="gallery id")]
STATS_DETAILS = ("metric", "serving", "trained", "index_type", "ntotal", "tombstones", "unsnapshotted")
SOURCE = "api"  # the client's file name is never stored or used as a path


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


def _metadata(text: str | None, i: int) -> dict:
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise APIError(422, "invalid_parameters", f"metadata of image {i} is not valid JSON") from None
    if not isinstance(value, dict):
        raise APIError(422, "invalid_parameters", f"metadata of image {i} must be a JSON object")
    return value


@router.post(
    "",
    status_code=201,
    response_model=AddResponse,
    responses=error_responses(400, 401, 403, 413, 415, 422, 500, 502, 503, 504),
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
    metas = [_metadata(m, i) for i, m in enumerate(_per_image(metadata, n, "metadata"))]
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


@router.delete("/{item_id}", response_model=DeleteResponse, responses=error_responses(401, 403, 404, 422, 500, 503))
async def delete_item(_: Admin, res: ReadyDep, item_id: ItemId) -> DeleteResponse:
    """Remove one gallery entry (its vector and its metadata)."""
    removed = await res.in_gallery(res.gallery.remove, [item_id])
    if not removed:
        raise APIError(404, "not_found", f"no gallery item {item_id}")
    res.metrics.gallery_size.set(len(res.gallery))
    return DeleteResponse(id=item_id, deleted=True)
