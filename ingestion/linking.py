"""Linking a gallery's tracks into identities: read the tracks, pick a threshold, link, write ``identity_id``.

The job behind ``python -m ingestion.link --gallery DIR|URI`` (command line in ingestion.cli). It reads the tracks
the gallery stores (index.tracks, index.milvus_tracks: one quality-weighted feature per track), links them with
ingestion.link and writes each track's identity back through the gallery, which gives out identity numbers that
are never reused.

The threshold, in order: ``threshold`` when given; else ``calibrate_links`` over the tracks whose best item
carries a person id (the constrained linker's false-link rate ``far``), when they are enough to measure it; else
the gallery's verdict calibration at ``far`` (crop-level: its rate is indicative for tracks); else
DEFAULT_THRESHOLD, said so in the run's ``threshold_source``.

Incremental (the default): tracks that have an identity keep it, tracks without one join the identity they match
(ingestion.link.join) or start one. ``full``: every track is linked again, identities kept where the clusters
overlap (ingestion.link.relabel), and the run says what changed. Erased tracks are gone from the gallery, so
no run can bring one back. Tracks without a capture time are left out (constraints need times), and counted.

API::

    run = link_gallery(gallery, *, far=0.01, topology=None, full=False, threshold=None, linkage="average")
    run.format() -> str      run.to_dict() -> dict
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from formats.spec import Calibration
from index.calibration import TooFewIdentitiesError
from index.protocol import Gallery
from ingestion.link import (
    LinkReport,
    RelinkReport,
    Topology,
    TrackSet,
    calibrate_links,
    cannot_link,
    join,
    learn_topology,
    link,
    relabel,
    threshold_for,
)

DEFAULT_THRESHOLD = 0.6  # used only when neither the tracks nor the gallery are calibrated: said in the report
DEFAULT_FAR = 0.01


@dataclass(frozen=True)
class LinkRun:
    mode: str  # "incremental" | "full"
    tracks: int  # tracks the gallery holds
    untimed: int  # left out: no capture time
    assigned: int  # tracks whose identity this run set or changed
    identities: int  # distinct identities among the linked tracks after the run
    threshold: float
    threshold_source: str
    far: float
    topology: Topology | None
    report: LinkReport | None  # the clustering's (full runs, and incremental runs with no identity yet)
    changes: RelinkReport | None  # full runs: what changed, in identity numbers

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["topology"] = None if self.topology is None else self.topology.model_dump()
        if self.report is not None:
            out["report"]["topology"] = None
        return out

    def format(self) -> str:
        lines = [
            f"link ({self.mode}): {self.tracks} tracks ({self.untimed} without a capture time left out), "
            f"{self.assigned} assigned, {self.identities} identities",
            f"threshold {self.threshold:.4f} ({self.threshold_source}; false-link rate {self.far})",
        ]
        if self.report is not None:
            lines.append(f"{self.report.note}; {self.report.cannot_links} cannot-link pairs")
        if self.changes is not None:
            c = self.changes
            lines.append(
                f"changes: {c.unchanged} unchanged, {len(c.merged)} merged, {len(c.split)} split, {len(c.new)} new,"
                f" {len(c.removed)} gone, {c.moved_tracks} tracks moved"
            )
        if self.topology is not None:
            kind = "learned" if self.topology.learned else "given"
            lines.append(f"topology ({kind}): {len(self.topology.pairs)} camera pairs")
            lines += [
                f"  {p.cameras[0]} <-> {p.cameras[1]}: min {p.min_transit_s:.1f} s, max "
                f"{'-' if p.max_transit_s is None else f'{p.max_transit_s:.1f} s'}"
                f"{'' if p.links is None else f' ({p.links} links)'}"
                for p in self.topology.pairs
            ]
        return "\n".join(lines)


def _threshold(gallery: Gallery, ts: TrackSet, best_ids: list[int], far: float, topology) -> tuple[float, str]:
    records = gallery.records(best_ids)
    labels = [getattr(records.get(i), "person_id", None) for i in best_ids]
    if sum(x is not None for x in labels) >= 2:
        try:
            points = calibrate_links(ts.xb @ ts.xb.T, labels, (far,), cannot=cannot_link(ts, topology))
            point = threshold_for(points, far)
            if point.reliable:
                return float(point.threshold), "calibrated on the tracks with a person id"
        except (TooFewIdentitiesError, ValueError):
            pass
    stored = gallery.calibration()
    if stored:
        try:
            point = threshold_for(Calibration.model_validate(stored), far)
            return float(point.threshold), "the gallery's verdict calibration (crop-level, indicative for tracks)"
        except ValueError:
            pass
    return DEFAULT_THRESHOLD, "the default: neither the tracks nor the gallery are calibrated"


def link_gallery(
    gallery: Gallery,
    *,
    far: float = DEFAULT_FAR,
    topology: Topology | None = None,
    full: bool = False,
    threshold: float | None = None,
    linkage: str = "average",
) -> LinkRun:
    """Link the gallery's tracks and write their identities (the module docstring says how)."""
    tracks, xb = gallery.track_vectors()
    timed = [i for i, t in enumerate(tracks) if t.first_seen is not None]
    kept = [tracks[i] for i in timed]
    ts = TrackSet.of(
        [t.track_id for t in kept],
        [t.camera_id or "" for t in kept],
        [t.first_seen for t in kept],
        [t.last_seen for t in kept],
        xb[timed] if timed else np.zeros((0, gallery.dim), np.float32),
    )
    source = "given"
    if threshold is None:
        threshold, source = _threshold(gallery, ts, [t.best_item_id for t in kept], far, topology)
    if topology is None and len(ts) > 1:
        topology = learn_topology(ts, confident=min(0.99, threshold + (1.0 - threshold) / 2))
    old = np.array([-1 if t.identity_id is None else t.identity_id for t in kept], dtype=np.int64)
    had = old >= 0
    report = changes = None
    if full or not had.any():
        result = link(ts, threshold=threshold, topology=topology, linkage=linkage)
        report = result.report
        labels, changes = relabel(old, result.labels)
        mode = "full" if full else "incremental"
        if not full:
            changes = None
    else:
        mode = "incremental"
        labels = old.copy()
        new = np.flatnonzero(~had)
        if len(new):
            labels[new] = join(ts.take(np.flatnonzero(had)), old[had], ts.take(new), threshold=threshold,
                               topology=topology, linkage=linkage)  # fmt: skip
    fresh = sorted(set(labels.tolist()) - set(old[had].tolist()))
    numbers = dict(zip(fresh, gallery.reserve_identities(len(fresh)), strict=True))
    final = np.array([numbers.get(x, x) for x in labels.tolist()], dtype=np.int64)
    assignments = {t.track_id: int(f) for t, f, o in zip(kept, final, old, strict=True) if f != o}
    if assignments:
        gallery.set_identities(assignments)
    if changes is not None:
        changes = _renumbered(changes, numbers)
    return LinkRun(mode, len(tracks), len(tracks) - len(kept), len(assignments), len(set(final.tolist())),
                   float(threshold), source, far, topology, report, changes)  # fmt: skip


def _renumbered(changes: RelinkReport, numbers: dict[int, int]) -> RelinkReport:
    """The report in the gallery's identity numbers (relabel numbers new clusters after the old ones)."""

    def n(x: int) -> int:
        return numbers.get(x, x)

    return dataclasses.replace(
        changes,
        merged=tuple((n(i), src) for i, src in changes.merged),
        split=tuple((i, tuple(n(x) for x in dst)) for i, dst in changes.split),
        new=tuple(n(i) for i in changes.new),
    )
