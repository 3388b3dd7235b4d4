"""Open-set identification: the operating points (threshold, DIR, FAR) of the server's "match / unknown" verdict.

Numpy on embeddings and labels, nothing else (no torch, no faiss), so evaluation (training/evaluate.py), the
gallery calibration (``python -m index.calibrate``) and the server share one definition.

Scores are the server's: a probe's exact top ``top_k`` hits by inner product of L2-normalised vectors, grouped
by ``index.records.aggregate_identities``; its score is the best identity's score (-inf when none of its top k
hits carries a person id: the server then answers "unknown" at any threshold). Gallery items without a label
take places among the top k, as they do in the server, and are never an identity.

    FAR(t) = fraction of absent-identity probes whose best identity score is >= t
    DIR(t) = fraction of enrolled probes whose own identity is ranked first with a score >= t

Two sources of probes:

- ``split_scores`` (evaluation): query images against gallery images. The identities are dealt into ``folds``
  (seeded); each fold in turn is left out of the gallery, so every query is an absent-identity probe once and
  an enrolled probe in the other folds, and the gallery holds (folds - 1) / folds of the identities.
- ``leave_one_identity_out`` (a user's gallery): each labelled identity in turn is absent (its crops searched
  against every other crop) and enrolled (each of its crops searched against the gallery less that crop).

How many identities a FAR needs (``identities_needed``): ceil(3 / FAR) absent identities. Probes of one identity
are not independent (one look-alike impostor fools most of them), so identities are the unit. With n absent
identities the threshold sits among the top n * FAR scores; when no false alarm is seen at all, the one-sided 95 %
upper bound on the rate is 1 - 0.05 ** (1 / n), about 3 / n (the "rule of three"), which is at most FAR only for
n >= 3 / FAR. Below that the measured rate cannot tell FAR from several times FAR. An operating point measured on
fewer is kept with ``reliable=False``; the gallery calibration refuses to store one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from formats.spec import Calibration, OperatingPoint
from index.records import Hit, Record, aggregate_identities

DEFAULT_TOP_K = 10  # the server's default top_k for POST /v1/search
FARS = (0.1, 0.01, 0.001)
RULE_OF_THREE = 3.0
CHUNK = 1024  # probe rows per similarity block: bounds memory at CHUNK x gallery floats


class TooFewIdentitiesError(ValueError):
    """A gallery has too few labelled identities to estimate a requested false-alarm rate."""


def identities_needed(far: float) -> int:
    """Absent identities needed to estimate a false-alarm rate ``far`` (the module docstring says why)."""
    if not 0 < far < 1:
        raise ValueError(f"a false-alarm rate is between 0 and 1, got {far}")
    return math.ceil(RULE_OF_THREE / far - 1e-9)


@dataclass(frozen=True)
class ProbeScores:
    """Best identity scores of absent-identity and enrolled probes, and the gallery they were searched in."""

    absent: np.ndarray  # (A,) float64; -inf: no identity among the top k
    absent_identity: np.ndarray  # (A,) the identity each absent probe shows
    enrolled: np.ndarray  # (E,) float64
    enrolled_correct: np.ndarray  # (E,) bool: the probe's own identity is ranked first
    gallery_identities: int
    gallery_crops: int

    @property
    def absent_identities(self) -> int:
        return len(np.unique(self.absent_identity)) if len(self.absent_identity) else 0

    def far(self, threshold: float) -> float:
        return float((self.absent >= threshold).mean()) if len(self.absent) else 0.0

    def dir(self, threshold: float) -> float:
        if not len(self.enrolled):
            return 0.0
        return float((self.enrolled_correct & (self.enrolled >= threshold)).mean())


# -- scoring -------------------------------------------------------------------------------------------------------


def _labels(labels: Sequence | np.ndarray) -> np.ndarray:
    """Labels as an object array of str or None."""
    return np.array([None if x is None else str(x) for x in labels], dtype=object)


def _top_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, I) of each row's k best columns, best first (ties by column); -inf columns are excluded ones."""
    k = min(k, block.shape[1])
    if k < block.shape[1]:
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(block.shape[1]), block.shape).copy()
    scores = np.take_along_axis(block, part, axis=1)
    order = np.lexsort((part, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def _best_identities(
    D: np.ndarray,  # noqa: N803 (faiss vocabulary)
    I: np.ndarray,  # noqa: E741, N803
    records: list[Record],
) -> tuple[np.ndarray, np.ndarray]:
    """(best identity, its score) per row of top-k hits, through the server's own aggregation."""
    best = np.empty(len(D), dtype=object)
    score = np.full(len(D), -np.inf)
    for row in range(len(D)):
        hits = [Hit(int(i), float(s), records[i]) for s, i in zip(D[row], I[row], strict=True) if s > -np.inf]
        identities = aggregate_identities(hits)
        if identities:
            best[row], score[row] = identities[0].person_id, identities[0].score
    return best, score


def _records(labels: np.ndarray) -> list[Record]:
    return [Record(person_id=label) for label in labels]


def _as_float32(x) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    return x


def search_identities(
    xq, xb, labels: Sequence | np.ndarray, *, top_k: int = DEFAULT_TOP_K
) -> tuple[np.ndarray, np.ndarray]:
    """(best identity or None, its score or -inf) of each query against the whole gallery, as the server ranks."""
    xq, xb = _as_float32(xq), _as_float32(xb)
    records = _records(_labels(labels))
    if len(records) != len(xb):
        raise ValueError("one label per embedding")
    best, score = [], []
    for start in range(0, len(xq), CHUNK):
        D, I = _top_k(xq[start : start + CHUNK] @ xb.T, top_k)  # noqa: E741, N806
        b, s = _best_identities(D, I, records)
        best.append(b)
        score.append(s)
    return np.concatenate(best) if best else np.empty(0, dtype=object), np.concatenate(score) if score else np.empty(0)


def probe_scores(
    xb,
    b_labels: Sequence,
    *,
    absent,
    absent_labels: Sequence,
    enrolled,
    enrolled_labels: Sequence,
    top_k: int = DEFAULT_TOP_K,
) -> ProbeScores:
    """Scores of explicit probe sets against one gallery: ``absent`` shows people the gallery does not hold,
    ``enrolled`` people it holds (a label the gallery lacks, or None, is refused on either side)."""
    b_lab = _labels(b_labels)
    in_gallery = {label for label in b_lab if label is not None}
    a_lab, e_lab = _labels(absent_labels), _labels(enrolled_labels)
    if any(label is None or label in in_gallery for label in a_lab):
        raise ValueError("an absent-identity probe must show a labelled person the gallery does not hold")
    if any(label not in in_gallery for label in e_lab):
        raise ValueError("an enrolled probe must show a person the gallery holds")
    _, a_score = search_identities(absent, xb, b_lab, top_k=top_k)
    e_best, e_score = search_identities(enrolled, xb, b_lab, top_k=top_k)
    return ProbeScores(
        absent=a_score,
        absent_identity=a_lab,
        enrolled=e_score,
        enrolled_correct=np.asarray(e_best == e_lab, dtype=bool),
        gallery_identities=len(in_gallery),
        gallery_crops=len(b_lab),
    )


def split_scores(
    xq,
    q_labels: Sequence,
    xb,
    b_labels: Sequence,
    *,
    folds: int = 5,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
) -> ProbeScores:
    """Probes from queries against a gallery whose identities are left out fold by fold (module docstring).

    ``b_labels`` may hold None (distractors: in every fold's gallery, never an identity); query labels may not.
    A query is an absent-identity probe in its own identity's fold, and an enrolled probe in every other fold
    where the gallery holds a crop of its identity. The gallery size is the folds' mean.
    """
    xq, xb = _as_float32(xq), _as_float32(xb)
    q_lab, b_lab = _labels(q_labels), _labels(b_labels)
    if len(q_lab) != len(xq) or len(b_lab) != len(xb):
        raise ValueError("one label per embedding")
    if any(label is None for label in q_lab):
        raise ValueError("every query needs a person id")
    identities = sorted({*q_lab, *(label for label in b_lab if label is not None)})
    if folds < 2 or folds > len(identities):
        raise ValueError(f"folds must be between 2 and the {len(identities)} identities, got {folds}")
    order = np.random.default_rng(seed).permutation(len(identities))
    fold_of = {identities[i]: pos % folds for pos, i in enumerate(order)}
    q_fold = np.array([fold_of[label] for label in q_lab])
    b_fold = np.array([-1 if label is None else fold_of[label] for label in b_lab])
    parts = []
    for f in range(folds):
        keep = b_fold != f
        held = {label for label in b_lab[keep] if label is not None}
        is_absent = q_fold == f
        is_enrolled = np.array([label in held for label in q_lab], dtype=bool) & ~is_absent
        parts.append(
            probe_scores(
                xb[keep],
                b_lab[keep],
                absent=xq[is_absent],
                absent_labels=q_lab[is_absent],
                enrolled=xq[is_enrolled],
                enrolled_labels=q_lab[is_enrolled],
                top_k=top_k,
            )
        )
    return ProbeScores(
        absent=np.concatenate([p.absent for p in parts]),
        absent_identity=np.concatenate([p.absent_identity for p in parts]),
        enrolled=np.concatenate([p.enrolled for p in parts]),
        enrolled_correct=np.concatenate([p.enrolled_correct for p in parts]),
        gallery_identities=round(np.mean([p.gallery_identities for p in parts])),
        gallery_crops=round(np.mean([p.gallery_crops for p in parts])),
    )


def leave_one_identity_out(xb, labels: Sequence, *, top_k: int = DEFAULT_TOP_K) -> ProbeScores:
    """Probes from a gallery itself: every labelled crop is an absent probe (its identity's crops left out) and,
    when its identity has another crop, an enrolled probe (only the crop itself left out)."""
    xb = _as_float32(xb)
    lab = _labels(labels)
    if len(lab) != len(xb):
        raise ValueError("one label per embedding")
    records = _records(lab)
    labelled = np.array([label is not None for label in lab], dtype=bool)
    ids, code, counts = np.unique(lab[labelled].astype(str), return_inverse=True, return_counts=True)
    codes = np.full(len(lab), -1, dtype=np.int64)  # integer identity per crop (-1: unlabelled) for fast masks
    codes[labelled] = code
    probes = np.flatnonzero(labelled)

    absent, enrolled, correct = [], [], []
    for start in range(0, len(probes), CHUNK):
        rows = probes[start : start + CHUNK]
        sims = xb[rows] @ xb.T
        own = codes[rows][:, None] == codes[None, :]  # the probe's identity, itself included
        D, I = _top_k(np.where(own, -np.inf, sims), top_k)  # noqa: E741, N806
        absent.append(_best_identities(D, I, records)[1])
        has_other = counts[codes[rows]] > 1
        others = sims[has_other]  # a copy: the absent search above is done with sims
        others[np.arange(len(others)), rows[has_other]] = -np.inf  # only the crop itself is left out
        D, I = _top_k(others, top_k)  # noqa: E741, N806
        best, score = _best_identities(D, I, records)
        enrolled.append(score)
        correct.append(best == lab[rows[has_other]])
    return ProbeScores(
        absent=np.concatenate(absent) if absent else np.empty(0),
        absent_identity=lab[probes],
        enrolled=np.concatenate(enrolled) if enrolled else np.empty(0),
        enrolled_correct=np.concatenate(correct).astype(bool) if correct else np.empty(0, dtype=bool),
        gallery_identities=len(ids),
        gallery_crops=len(lab),
    )


# -- operating points ----------------------------------------------------------------------------------------------


def threshold_at_far(absent: np.ndarray, far: float) -> float:
    """The lowest score t with mean(absent >= t) <= far (scores are float32 in the server: t is one too)."""
    absent = np.asarray(absent, dtype=np.float64)
    if absent.size == 0:
        raise ValueError("no absent-identity probes to calibrate on")
    ordered = np.sort(absent)[::-1]
    allowed = math.floor(far * ordered.size + 1e-9)  # false alarms the target permits
    if allowed >= ordered.size:
        return float(-np.finfo(np.float32).max)
    # Just above the first score that must not pass: every score above it passes, and there are <= allowed.
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


def operating_points(scores: ProbeScores, fars: Sequence[float] = FARS) -> tuple[OperatingPoint, ...]:
    """One operating point per target FAR, strictest last."""
    n_absent = scores.absent_identities
    points = []
    for far in sorted(set(fars), reverse=True):
        t = threshold_at_far(scores.absent, far)
        points.append(
            OperatingPoint(
                target_far=far,
                threshold=t,
                dir=scores.dir(t),
                far=scores.far(t),
                absent_identities=n_absent,
                absent_probes=len(scores.absent),
                enrolled_probes=len(scores.enrolled),
                reliable=n_absent >= identities_needed(far),
            )
        )
    return tuple(points)


def calibration(
    scores: ProbeScores,
    fars: Sequence[float] = FARS,
    *,
    source: str,
    method: str,
    top_k: int = DEFAULT_TOP_K,
    dataset: str = "",
    seed: int | None = None,
) -> Calibration:
    return Calibration(
        source=source,
        method=method,
        top_k=top_k,
        gallery_identities=scores.gallery_identities,
        gallery_crops=scores.gallery_crops,
        dataset=dataset,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=seed,
        operating_points=operating_points(scores, fars),
    )


def check_estimable(labels: Sequence, fars: Sequence[float]) -> None:
    """TooFewIdentitiesError unless a leave-one-identity-out over ``labels`` can estimate every FAR in ``fars``."""
    lab = [str(x) for x in labels if x is not None]
    identities, counts = np.unique(lab, return_counts=True) if lab else (np.empty(0), np.empty(0))
    n = len(identities)
    short = [(far, identities_needed(far)) for far in sorted(set(fars), reverse=True) if n < identities_needed(far)]
    if short:
        wants = "; ".join(f"FAR {far:g} needs at least {need}" for far, need in short)
        best = RULE_OF_THREE / n if n else None
        hint = f" With {n}, FAR {best:.3g} or more can be estimated." if best is not None and best < 1 else ""
        raise TooFewIdentitiesError(
            f"the gallery has {n} labelled identities (person ids), too few to estimate the false-alarm rate: "
            f"{wants} (each identity is one absent-person trial; with fewer than 3 / FAR trials even zero false "
            f"alarms cannot show at 95 % confidence that the rate is at most FAR).{hint} Add labelled people or "
            "ask for a higher --far."
        )
    if not (counts > 1).any():
        raise TooFewIdentitiesError(
            "no identity in the gallery has two crops or more: the detection rate (DIR) needs a person with "
            "another crop to find"
        )


def choose(calibration: Calibration | None, target_far: float) -> tuple[OperatingPoint | None, bool]:
    """(the operating point for ``target_far``, exact): the one measured for that target, else the nearest
    stricter one (a lower target FAR), else (None, False)."""
    if calibration is None:
        return None, False
    stricter = [p for p in calibration.operating_points if p.target_far <= target_far * (1 + 1e-9)]
    if not stricter:
        return None, False
    point = max(stricter, key=lambda p: p.target_far)
    return point, math.isclose(point.target_far, target_far, rel_tol=1e-9)


def dir_far_curve(scores: ProbeScores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, DIR, threshold) at every threshold where the measured FAR changes, loosest first."""
    ordered = np.sort(scores.absent)[::-1]
    finite = ordered[np.isfinite(ordered)]
    thresholds = np.nextafter(finite.astype(np.float32), np.float32(np.inf)).astype(np.float64)
    thresholds = np.unique(thresholds)[::-1]
    absent_sorted = np.sort(scores.absent)
    hits = np.sort(scores.enrolled[scores.enrolled_correct])
    n_a, n_e = max(len(scores.absent), 1), max(len(scores.enrolled), 1)
    far = (len(absent_sorted) - np.searchsorted(absent_sorted, thresholds, side="left")) / n_a
    dir_ = (len(hits) - np.searchsorted(hits, thresholds, side="left")) / n_e
    return far, dir_, thresholds
