"""JSON bodies the API answers with (requests are multipart forms, declared on the routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from index.records import Hit, Identity, Record


class GalleryItem(BaseModel):
    id: int
    person_id: str | None
    camera_id: str | None
    captured_at: float | None = Field(None, description="Unix seconds")
    track_id: str | None = None
    source: str | None = None
    content_hash: str | None = None
    metadata: dict[str, Any] = {}
    added_at: float | None = Field(None, description="Unix seconds")

    @classmethod
    def of(cls, record: Record) -> GalleryItem:
        return cls(
            id=record.id,
            person_id=record.person_id,
            camera_id=record.camera_id,
            captured_at=record.captured_at,
            track_id=record.track_id,
            source=record.source,
            content_hash=record.content_hash,
            metadata=record.metadata,
            added_at=record.added_at,
        )


class SearchHit(BaseModel):
    id: int
    score: float = Field(description="cosine similarity of the query and the gallery image")
    person_id: str | None
    camera_id: str | None
    captured_at: float | None = None
    track_id: str | None = None
    metadata: dict[str, Any] = {}

    @classmethod
    def of(cls, hit: Hit) -> SearchHit:
        r = hit.record
        return cls(
            id=hit.id,
            score=hit.score,
            person_id=r.person_id,
            camera_id=r.camera_id,
            captured_at=r.captured_at,
            track_id=r.track_id,
            metadata=r.metadata,
        )


class IdentityResult(BaseModel):
    person_id: str
    score: float = Field(description="best hit's score")
    count: int = Field(description="hits of this person among the top k")
    best_id: int = Field(description="gallery id of the best hit")

    @classmethod
    def of(cls, identity: Identity) -> IdentityResult:
        return cls(person_id=identity.person_id, score=identity.score, count=identity.count, best_id=identity.best_id)


class Timings(BaseModel):
    decode_ms: float
    embed_ms: float
    search_ms: float = 0.0


class SearchResponse(BaseModel):
    model_id: str
    verdict: Literal["match", "unknown"] | None = Field(
        description="match when the best identity's score reaches the model's calibrated threshold; "
        "null when the model has no threshold"
    )
    threshold: float | None
    identities: list[IdentityResult]
    hits: list[SearchHit]
    timings: Timings


class EmbedResponse(BaseModel):
    model_id: str
    dim: int
    embedding: list[float]
    timings: Timings


class AddedItem(BaseModel):
    index: int = Field(description="position of the image in the request")
    id: int
    duplicate: bool = Field(description="the same bytes were already in the gallery (or earlier in this request)")


class AddResponse(BaseModel):
    model_id: str
    ids: list[int]
    items: list[AddedItem]
    added: int
    duplicates: int


class DeleteResponse(BaseModel):
    id: int
    deleted: bool


class GalleryStats(BaseModel):
    count: int
    model_id: str
    dim: int
    index_type: str
    details: dict[str, Any] = {}


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    model_id: str
    backend: str
    gallery_size: int
