"""The search verdict's operating point: which threshold answers "match" at the target false-alarm rate.

The gallery's own calibration (``python -m index.calibrate``, leave-one-identity-out over its people) comes
first, then the artifact's (measured on the model's evaluation split), then an older artifact's pair-level
threshold. Within a calibration, the point calibrated for the target FAR, else the nearest stricter one (a lower
FAR, a higher threshold), never a looser one. Worked out once per (spec, gallery calibration, target), since the
inputs change only when the server restarts or the gallery is recalibrated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from formats.spec import Calibration, ModelSpec
from index.calibration import choose, identities_needed
from index.records import Identity
from server.schemas import VerdictCalibration

log = logging.getLogger("server.verdict")


@dataclass(frozen=True)
class VerdictBasis:
    threshold: float | None
    calibration: VerdictCalibration | None

    def verdict(self, identities: list[Identity]) -> str | None:
        if self.threshold is None:
            return None
        return "match" if identities and identities[0].score >= self.threshold else "unknown"


def _from_calibration(calibration: Calibration, target_far: float, notes: list[str]) -> VerdictBasis | None:
    point, exact = choose(calibration, target_far)
    if point is None:
        fars = ", ".join(f"{p.target_far:g}" for p in calibration.operating_points) or "none"
        notes.append(
            f"the {calibration.source}'s calibration has no operating point at FAR {target_far:g} or below ({fars})"
        )
        return None
    if not exact:
        notes.append(
            f"no operating point was calibrated for FAR {target_far:g}; the nearest stricter one "
            f"(FAR {point.target_far:g}) is used"
        )
    if not point.reliable:
        notes.append(
            f"measured on {point.absent_identities} absent identities: too few to estimate FAR "
            f"{point.target_far:g} (at least {identities_needed(point.target_far)} are needed), so the real rate "
            "may be several times higher"
        )
    info = VerdictCalibration(
        source=calibration.source,
        method=calibration.method,
        far=point.target_far,
        measured_far=point.far,
        dir=point.dir,
        gallery_identities=calibration.gallery_identities,
        gallery_crops=calibration.gallery_crops,
        top_k=calibration.top_k,
        measured_at=calibration.measured_at or None,
        exact=exact,
        reliable=point.reliable,
        note="; ".join(notes) or None,
    )
    return VerdictBasis(point.threshold, info)


def _gallery_calibration(raw: dict | None, notes: list[str]) -> Calibration | None:
    if raw is None:
        return None
    try:
        return Calibration.model_validate(raw)
    except ValidationError as exc:
        log.warning("the gallery's calibration does not read (%s); ignored", exc)
        notes.append("the gallery's calibration does not read and is ignored")
        return None


def verdict_basis(spec: ModelSpec, gallery_calibration: dict | None, target_far: float) -> VerdictBasis:
    notes: list[str] = []
    for calibration in (_gallery_calibration(gallery_calibration, notes), spec.calibration):
        if calibration is not None and (basis := _from_calibration(calibration, target_far, notes)) is not None:
            return basis
    if spec.threshold is not None:
        notes.append(
            f"the model has only a pair-level threshold (false-positive rate {spec.threshold.fpr:g} per image "
            "pair), not calibrated for identities: the false-alarm rate of this verdict is unknown"
        )
        info = VerdictCalibration(source="pair-threshold", exact=False, reliable=False, note="; ".join(notes))
        return VerdictBasis(spec.threshold.score, info)
    if notes:
        source = "gallery" if gallery_calibration is not None else "artifact"
        return VerdictBasis(None, VerdictCalibration(source=source, exact=False, reliable=False, note="; ".join(notes)))
    return VerdictBasis(None, None)


class VerdictCache:
    """The basis of the last (spec, gallery calibration, target) seen: the same objects give the same answer.
    Holding them keeps their ids from being reused by new objects; one tuple, so a reader never sees half."""

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def get(self, spec: ModelSpec, gallery_calibration: dict | None, target_far: float) -> VerdictBasis:
        entry = self._entry
        if entry is None or entry[0] is not spec or entry[1] is not gallery_calibration or entry[2] != target_far:
            entry = (spec, gallery_calibration, target_far, verdict_basis(spec, gallery_calibration, target_far))
            self._entry = entry
        return entry[3]
