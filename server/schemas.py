"""JSON bodies the API answers with (requests are multipart forms, declared on the routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from index.records import Hit, Identity, Record
from server.errors import ErrorDetail

METADATA_DOC = (
    'the JSON object stored with the image; {"_unreadable": reason} stands in for a stored value that cannot be'
    " served (written by an older version, or damaged)"
)


class GalleryItem(BaseModel):
    id: int
    person_id: str | None
    camera_id: str | None
    captured_at: float | None = Field(None, description="Unix seconds")
    track_id: str | None = None
    source: str | None = None
    content_hash: str | None = None
    metadata: dict[str, Any] = Field({}, description=METADATA_DOC)
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
    metadata: dict[str, Any] = Field({}, description=METADATA_DOC)

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


class VerdictCalibration(BaseModel):
    """The operating point a verdict was given at, and what it was measured on."""

    source: Literal["gallery", "artifact", "pair-threshold"] = Field(
        description="gallery: measured on this gallery (reid calibrate); artifact: on the model's evaluation "
        "split at export; pair-threshold: an older model's pair-level threshold, not calibrated for identities"
    )
    method: str | None = Field(None, description="identity-split | leave-one-identity-out")
    far: float | None = Field(None, description="the identity-level false-alarm rate the point was calibrated for")
    measured_far: float | None = Field(None, description="the false-alarm rate measured at the threshold")
    dir: float | None = Field(None, description="detection and identification rate measured at the threshold")
    gallery_identities: int | None = Field(None, description="identities in the gallery it was measured on")
    gallery_crops: int | None = Field(None, description="crops in the gallery it was measured on")
    top_k: int | None = Field(None, description="hits aggregated into identities when it was measured")
    measured_at: str | None = None
    exact: bool = Field(description="the point was calibrated for the target FAR itself (else a stricter one)")
    reliable: bool = Field(description="enough absent identities were measured to estimate that rate")
    note: str | None = Field(None, description="why the point differs from the target, or what to be careful of")


class SearchResponse(BaseModel):
    model_id: str
    verdict: Literal["match", "unknown"] | None = Field(
        description="match when the best identity's score reaches the threshold of the operating point for the "
        "target FAR; null when neither the gallery nor the model has one"
    )
    threshold: float | None = Field(description="the score the best identity had to reach")
    target_far: float = Field(description="the identity-level false-alarm rate asked for (REID_TARGET_FAR)")
    calibration: VerdictCalibration | None = Field(description="where the threshold comes from")
    identities: list[IdentityResult]
    hits: list[SearchHit]
    timings: Timings
    unmatched_filters: dict[Literal["cameras", "exclude_cameras", "person_ids"], list[str]] = Field(
        {},
        description="filter values that no gallery item has (a mistyped camera or person id, say), by filter; "
        "empty when every value exists. Such a value is no error: it just matches nothing",
    )


class EmbedResponse(BaseModel):
    model_id: str
    dim: int
    embedding: list[float]
    timings: Timings


class AddedItem(BaseModel):
    index: int = Field(description="position of the image in the request")
    id: int | None = Field(description="its gallery id; null when it was refused")
    duplicate: bool = Field(description="the same bytes were already in the gallery (or earlier in this request)")
    error: ErrorDetail | None = Field(None, description="why this image was refused (the others were not)")


class AddResponse(BaseModel):
    model_id: str
    ids: list[int | None] = Field(description="each image's gallery id, in order; null for a refused one")
    items: list[AddedItem]
    added: int
    duplicates: int
    failed: int = Field(0, description="images refused (each item says why); the answer is 207 when this is not 0")


class DeleteResponse(BaseModel):
    id: int
    deleted: bool


class GalleryStats(BaseModel):
    count: int
    model_id: str
    dim: int
    index_type: str
    variant: str | None = Field(
        None, description="the model variant (fp32, int8, fp16...) that embeds this server's queries and additions"
    )
    details: dict[str, Any] = {}


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    model_id: str
    variant: str = Field(description="the served variant of the model (fp32, int8, fp16...; REID_MODEL_VARIANT)")
    backend: str
    gallery_size: int
