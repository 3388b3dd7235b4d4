"""Plain data the gallery takes and returns: records, hits, search filters, identities."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Record:
    """Metadata of one gallery vector. ``captured_at`` and ``added_at`` are Unix seconds."""

    person_id: str | None = None
    camera_id: str | None = None
    captured_at: float | None = None
    track_id: str | None = None
    source: str | None = None
    content_hash: str | None = None
    metadata: dict = field(default_factory=dict)
    id: int | None = None
    added_at: float | None = None


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # inner product of L2-normalised vectors = cosine similarity
    record: Record


@dataclass(frozen=True)
class SearchFilter:
    """Keep hits from ``cameras`` (if given), not from ``exclude_cameras``, of ``person_ids`` (if given),
    captured within [time_from, time_to] (records without a capture time fail a time window)."""

    cameras: frozenset[str] | None = None
    exclude_cameras: frozenset[str] | None = None
    person_ids: frozenset[str] | None = None
    time_from: float | None = None
    time_to: float | None = None

    def __post_init__(self):
        # Accept any iterable of ids; store frozensets of strings so membership is exact and cheap.
        for name in ("cameras", "exclude_cameras", "person_ids"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, frozenset(str(v) for v in _as_iterable(value)))

    @property
    def is_empty(self) -> bool:
        return all(
            v is None for v in (self.cameras, self.exclude_cameras, self.person_ids, self.time_from, self.time_to)
        )

    def matches(self, record: Record) -> bool:
        if self.cameras is not None and record.camera_id not in self.cameras:
            return False
        if self.exclude_cameras is not None and record.camera_id in self.exclude_cameras:
            return False
        if self.person_ids is not None and record.person_id not in self.person_ids:
            return False
        if self.time_from is not None or self.time_to is not None:
            t = record.captured_at
            if t is None:
                return False
            if self.time_from is not None and t < self.time_from:
                return False
            if self.time_to is not None and t > self.time_to:
                return False
        return True


def _as_iterable(value) -> Iterable:
    return [value] if isinstance(value, str | int) else value


@dataclass(frozen=True)
class Identity:
    """One person among the hits: ranked by the best hit's score, with all of that person's hits as evidence."""

    person_id: str
    score: float
    count: int
    best_id: int
    hits: list[Hit]


def aggregate_identities(hits: Iterable[Hit]) -> list[Identity]:
    """Group hits by person id (hits without one are left out), best score first; ties go to more hits."""
    by_person: dict[str, list[Hit]] = {}
    for hit in hits:
        if hit.record.person_id is not None:
            by_person.setdefault(hit.record.person_id, []).append(hit)
    identities = []
    for person_id, group in by_person.items():
        group = sorted(group, key=lambda h: (-h.score, h.id))
        identities.append(Identity(person_id, group[0].score, len(group), group[0].id, group))
    identities.sort(key=lambda i: (-i.score, -i.count, i.person_id))
    return identities
