"""Typed results, parsed from the API's JSON (unknown fields are ignored, so newer servers stay readable)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _parse(cls: type[T], data: dict) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Timings:
    decode_ms: float
    embed_ms: float
    search_ms: float = 0.0


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    person_id: str | None
    camera_id: str | None
    captured_at: float | None = None
    track_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Identity:
    person_id: str
    score: float
    count: int
    best_id: int


@dataclass(frozen=True)
class VerdictCalibration:
    """Where a verdict's threshold comes from: ``source`` gallery (measured on this gallery), artifact (on the
    model's evaluation split) or pair-threshold (an older model's, not calibrated for identities)."""

    source: str
    exact: bool = False
    reliable: bool = False
    method: str | None = None
    far: float | None = None
    measured_far: float | None = None
    dir: float | None = None
    gallery_identities: int | None = None
    gallery_crops: int | None = None
    top_k: int | None = None
    measured_at: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class SearchResult:
    model_id: str
    verdict: Literal["match", "unknown"] | None
    threshold: float | None
    identities: list[Identity]
    hits: list[Hit]
    timings: Timings
    target_far: float | None = None  # None from servers older than the identity-level calibration
    calibration: VerdictCalibration | None = None
    unmatched_filters: dict[str, list[str]] = field(default_factory=dict)  # filter values no gallery item has

    @classmethod
    def from_json(cls, data: dict) -> SearchResult:
        calibration = data.get("calibration")
        return cls(
            model_id=data["model_id"],
            verdict=data.get("verdict"),
            threshold=data.get("threshold"),
            identities=[_parse(Identity, i) for i in data["identities"]],
            hits=[_parse(Hit, h) for h in data["hits"]],
            timings=_parse(Timings, data["timings"]),
            target_far=data.get("target_far"),
            calibration=None if calibration is None else _parse(VerdictCalibration, calibration),
            unmatched_filters=data.get("unmatched_filters") or {},
        )


@dataclass(frozen=True)
class Embedding:
    model_id: str
    dim: int
    vector: list[float]
    timings: Timings

    @classmethod
    def from_json(cls, data: dict) -> Embedding:
        return cls(data["model_id"], data["dim"], data["embedding"], _parse(Timings, data["timings"]))


@dataclass(frozen=True)
class AddedItem:
    index: int
    id: int | None  # None when the server refused this image (``error`` says why)
    duplicate: bool
    error: dict[str, str] | None = None  # {"code", "message"} of a refused image

    @property
    def reason(self) -> str | None:
        return None if self.error is None else f"{self.error.get('code')}: {self.error.get('message')}"


@dataclass(frozen=True)
class AddResult:
    """One add's answer; some images may have been refused while the others were added (``failed``)."""

    model_id: str
    ids: list[int | None]
    items: list[AddedItem]
    added: int
    duplicates: int
    failed: int = 0

    @classmethod
    def from_json(cls, data: dict) -> AddResult:
        items = [_parse(AddedItem, i) for i in data["items"]]
        return cls(data["model_id"], data["ids"], items, data["added"], data["duplicates"], data.get("failed", 0))


@dataclass(frozen=True)
class GalleryItem:
    id: int
    person_id: str | None
    camera_id: str | None
    captured_at: float | None = None
    track_id: str | None = None
    source: str | None = None
    content_hash: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    added_at: float | None = None

    @classmethod
    def from_json(cls, data: dict) -> GalleryItem:
        return _parse(cls, data)


@dataclass(frozen=True)
class GalleryStats:
    count: int
    model_id: str
    dim: int
    index_type: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> GalleryStats:
        return _parse(cls, data)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    model_id: str | None = None
    backend: str | None = None
    gallery_size: int | None = None
    reason: str = ""
