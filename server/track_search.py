"""What POST /v1/search does with tracks: several query crops pooled into one query, and hits grouped by track.

Several ``image`` parts are one person seen in several crops: each is embedded, and the query is the mean of the
L2-normalised embeddings, re-normalised (pooling query crops is what the ReID literature does for multi-shot
queries). ``group_by=track`` adds ``tracks``: the tracks among the hits (hits without a track_id are left out),
best score first, each with its stored summary and identity (index.track_records).
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import UploadFile

from index.records import Hit
from server.deps import EmbedderDep, GalleryDep
from server.errors import APIError
from server.schemas import SearchResponse
from server.track_schemas import SearchTrack, TrackResult

MAX_QUERY_IMAGES = 16  # crops of one query person; each costs a decode and a row of the embedding batch


class TrackSearchResponse(SearchResponse):
    tracks: list[SearchTrack] | None = None  # with group_by=track; null otherwise


async def embed_query(model: EmbedderDep, images: list[UploadFile]) -> tuple[np.ndarray, float, float]:
    """One query (1, D) from one or several crops, with decode and embed seconds."""
    if not 1 <= len(images) <= MAX_QUERY_IMAGES:
        raise APIError(422, "invalid_parameters", f"image: give 1 to {MAX_QUERY_IMAGES} crops of the query person")
    t0 = time.perf_counter()
    rgb = [await model.decode(await image.read(), inline=len(images) == 1) for image in images]
    t1 = time.perf_counter()
    x = await model.embed(np.stack(rgb))
    if len(x) > 1:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        x = x.mean(axis=0, keepdims=True)
        x = x / max(float(np.linalg.norm(x)), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32), t1 - t0, time.perf_counter() - t1


async def tracks_of_hits(gallery: GalleryDep, hits: list[Hit]) -> list[SearchTrack]:
    """The tracks among ``hits``, best score first (then by track id); a track removed meanwhile is left out."""
    best: dict[str, float] = {}
    for hit in hits:
        tid = hit.record.track_id
        if tid is not None and hit.score > best.get(tid, -np.inf):
            best[tid] = hit.score
    if not best:
        return []
    stored = await gallery.read(gallery.gallery.tracks_of, list(best))
    ranked = sorted((t for t in best if t in stored), key=lambda t: (-best[t], t))
    return [SearchTrack(**TrackResult.of(stored[t]).model_dump(), score=best[t]) for t in ranked]
