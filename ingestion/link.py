"""Linking tracks into identities: appearance clustering under camera and time constraints.

Numpy in, numpy out; no gallery, no I/O besides reading a topology file. A caller passes its tracks as arrays
(``TrackSet``: track ids, cameras, first/last seen in seconds, one L2-normalised feature per track, see
ingestion.track_features) and gets one identity number per track and a report.

Two tracks are linked by hierarchical clustering (scipy.cluster.hierarchy, average linkage by default, complete
on request) of the distance 1 - similarity, cut where the linkage's similarity falls below ``threshold``.
Constraints hold whatever the appearance says; they are cannot-links:

- two tracks on the same camera whose time spans overlap (closed intervals) are different people;
- with a ``Topology`` (camera pairs with minimum and maximum transit seconds), two tracks on a listed pair of
  cameras whose gap (the later one's first sighting less the earlier one's last; negative when they overlap) is
  shorter than the pair's minimum transit are different people. Pairs the topology does not list, and every
  pair without a topology, are unconstrained: cameras may see the same place. The maximum transit is not a
  constraint (a person may go elsewhere between two cameras and come back a day later); it is reported.

A cannot-link's distance is set to ``CANNOT``, far above any real distance (at most 2): complete linkage can then
never merge across it, and average linkage only in a cluster of more than ``CANNOT / 2`` pairs. Every cluster is
checked afterwards and one that holds a cannot-link pair is re-clustered with complete linkage (which respects
them all), so the result never violates a constraint.

The threshold is a similarity in the units of the verdict calibration (index.calibration): ``calibrate_links``
runs its leave-one-identity-out over labelled tracks (tracks whose items carry a person id; the truth in a
benchmark), and its operating point for a false-link rate FAR is the lowest similarity at which at most FAR of
the tracks of a person seen nowhere else find another person's track at or above it. Given the cannot-links, the
pairs the linker may never join are left out, so the rate is the constrained linker's (a lower threshold for the
same rate: constraints buy recall). ``threshold_for`` picks the point; a gallery with no labelled tracks can only
fall back on its crop-level calibration, whose rate is indicative (crops and track means score differently).

``link`` holds (T, T) matrices (float64 distances, bool cannot-links): about 10 k tracks per call fit in a few GB
(4,912 tracks took ~12 s on 2 shared cores); ``join`` adds later tracks at new x all cost.

Without a topology, ``learn_topology`` learns one from confident links (mutual best matches across a camera
pair above a stricter similarity): per pair, the shortest and longest gap seen, the minimum eased by ``SLACK``.

API::

    TrackSet.of(track_id, camera_id, first_seen, last_seen, xb)          # validated arrays
    Topology(pairs=(Transit(cameras=("a", "b"), min_transit_s=20, max_transit_s=90), ...))
    load_topology(path) -> Topology                                    # JSON or YAML, same fields
    cannot_link(tracks, topology=None) -> (T, T) bool
    violations(tracks, labels, topology=None) -> (K, 2) int            # index pairs linked against a constraint
    link(tracks, *, threshold, topology=None, linkage="average", similarity=None, constraints=True) -> Linking
        Linking.labels (T,) int64 (identity numbers 0..K-1 in order of first sighting), .report (LinkReport)
    join(old, old_labels, new, *, threshold, topology=None, linkage="average") -> (N,) int64   # incremental
    relink(tracks, old_labels, *, threshold, ..., known_ids=None) -> (labels, LinkReport, RelinkReport)
    relabel(old_labels, new_labels, *, known_ids=None) -> (labels, RelinkReport)
    learn_topology(tracks, *, confident, similarity=None, min_links=3) -> Topology
    calibrate_links(similarity, labels, fars=FARS, *, cannot=None) -> tuple[OperatingPoint, ...]
    threshold_for(points, far) -> OperatingPoint
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as hierarchy_linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform

from formats.spec import Calibration, OperatingPoint
from index.calibration import FARS, ProbeScores, choose, operating_points

CANNOT = 1e6  # the distance of a cannot-link pair (real distances 1 - cos lie in [0, 2])
SLACK = 0.5  # a learned minimum transit is eased by this share of its magnitude: few links see the fastest walker
LINKAGES = ("average", "complete")


# -- tracks and topology -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackSet:
    """Tracks as parallel arrays; times in seconds (any epoch, the same for all)."""

    track_id: np.ndarray  # (T,) object
    camera_id: np.ndarray  # (T,) object (str)
    first_seen: np.ndarray  # (T,) float64
    last_seen: np.ndarray  # (T,) float64
    xb: np.ndarray  # (T, D) float32, L2-normalised

    @classmethod
    def of(cls, track_id, camera_id, first_seen, last_seen, xb) -> TrackSet:
        ids = np.asarray(list(track_id), dtype=object)
        cams = np.asarray([str(c) for c in camera_id], dtype=object)
        first, last = np.asarray(first_seen, dtype=np.float64), np.asarray(last_seen, dtype=np.float64)
        xb = np.asarray(xb, dtype=np.float32)
        if xb.ndim != 2 and len(ids) == 0:
            xb = xb.reshape(0, 0)
        n = len(ids)
        if xb.ndim != 2 or any(len(a) != n for a in (cams, first, last, xb)):
            raise ValueError("track_id, camera_id, first_seen, last_seen and xb must have one row per track")
        if len(set(ids.tolist())) != n:
            raise ValueError("track ids must be unique")
        if not (np.isfinite(first).all() and np.isfinite(last).all()) or (last < first).any():
            raise ValueError("every track needs finite times with first_seen <= last_seen")
        return cls(ids, cams, first, last, xb)

    def __len__(self) -> int:
        return len(self.track_id)

    def take(self, idx) -> TrackSet:
        idx = np.asarray(idx, dtype=np.int64)
        return TrackSet(
            self.track_id[idx], self.camera_id[idx], self.first_seen[idx], self.last_seen[idx], self.xb[idx]
        )

    def __add__(self, other: TrackSet) -> TrackSet:
        if len(self) and len(other) and self.xb.shape[1] != other.xb.shape[1]:
            raise ValueError("tracks of different feature dims")
        xb = other.xb if not len(self) else self.xb if not len(other) else np.concatenate([self.xb, other.xb])
        return TrackSet.of(
            np.concatenate([self.track_id, other.track_id]),
            np.concatenate([self.camera_id, other.camera_id]),
            np.concatenate([self.first_seen, other.first_seen]),
            np.concatenate([self.last_seen, other.last_seen]),
            xb,
        )


class Transit(BaseModel):
    """One camera pair (either direction): the shortest and longest time a person takes between them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cameras: tuple[str, str]
    min_transit_s: float  # negative: the cameras' views overlap by up to that long
    max_transit_s: float | None = None
    links: int | None = Field(default=None, ge=0)  # learned: how many confident links the figures come from

    @model_validator(mode="after")
    def _check(self) -> Transit:
        if self.cameras[0] == self.cameras[1]:
            raise ValueError(f"a transit joins two different cameras, got {self.cameras}")
        if self.max_transit_s is not None and self.max_transit_s < self.min_transit_s:
            raise ValueError(f"{self.cameras}: max_transit_s below min_transit_s")
        return self


class Topology(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    pairs: tuple[Transit, ...] = ()
    learned: bool = False

    @model_validator(mode="after")
    def _unique(self) -> Topology:
        keys = [frozenset(p.cameras) for p in self.pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("a camera pair is listed twice")
        return self

    def min_transit(self, cameras, others=None) -> np.ndarray:
        """(len cameras, len others) minimum transit between the tracks' cameras (``others`` defaults to
        ``cameras``); -inf where unconstrained (the same camera included)."""
        a = np.asarray(cameras, dtype=str)
        b = a if others is None else np.asarray(others, dtype=str)
        names, code = np.unique(np.concatenate([a, b]), return_inverse=True)
        pos = {name: i for i, name in enumerate(names.tolist())}
        table = np.full((len(names), len(names)), -np.inf)
        for p in self.pairs:
            i, j = pos.get(p.cameras[0]), pos.get(p.cameras[1])
            if i is not None and j is not None:
                table[i, j] = table[j, i] = p.min_transit_s
        return table[code[: len(a), None], code[None, len(a) :]]


def load_topology(path: str | Path) -> Topology:
    """A topology file: JSON, or YAML when the name ends in .yaml/.yml, with the fields of ``Topology``."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # only YAML topologies need it

        return Topology.model_validate(yaml.safe_load(text) or {})
    return Topology.model_validate(json.loads(text))


# -- constraints ---------------------------------------------------------------------------------------------------


def _cannot(a: TrackSet, b: TrackSet, topology: Topology | None) -> np.ndarray:
    """(len a, len b) bool: which pairs of a track of ``a`` and one of ``b`` must be different people."""
    _, code = np.unique(np.concatenate([a.camera_id, b.camera_id]).astype(str), return_inverse=True)
    same = code[: len(a), None] == code[None, len(a) :]  # integer codes: comparing objects is ~10x slower
    overlap = (a.first_seen[:, None] <= b.last_seen[None, :]) & (b.first_seen[None, :] <= a.last_seen[:, None])
    out = same & overlap
    if topology is not None and topology.pairs and len(a) and len(b):
        gap = np.maximum(a.first_seen[:, None], b.first_seen[None, :]) - np.minimum(
            a.last_seen[:, None], b.last_seen[None, :]
        )
        out |= ~same & (gap < topology.min_transit(a.camera_id, b.camera_id))
    return out


def cannot_link(tracks: TrackSet, topology: Topology | None = None) -> np.ndarray:
    """(T, T) bool: the pairs that must be different people (module docstring); the diagonal is False."""
    out = _cannot(tracks, tracks, topology)
    np.fill_diagonal(out, False)
    return out


def violations(tracks: TrackSet, labels, topology: Topology | None = None) -> np.ndarray:
    """(K, 2) index pairs (i < j) given one identity although a constraint says they are different people."""
    labels = np.asarray(labels)
    bad = cannot_link(tracks, topology) & (labels[:, None] == labels[None, :])
    i, j = np.nonzero(np.triu(bad, 1))
    return np.stack([i, j], axis=1)


# -- linking -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkReport:
    tracks: int
    identities: int
    cameras: int
    threshold: float
    linkage: str
    cannot_links: int  # constrained pairs (each pair once)
    reclustered: int  # clusters that held a cannot-link after the cut and were re-cut with complete linkage
    topology: Topology | None
    note: str  # one sentence for the cases with nothing to link


@dataclass(frozen=True)
class Linking:
    labels: np.ndarray  # (T,) int64
    report: LinkReport


def _similarity(tracks: TrackSet, similarity) -> np.ndarray:
    if similarity is None:
        return tracks.xb @ tracks.xb.T
    s = np.asarray(similarity, dtype=np.float32)
    if s.shape != (len(tracks), len(tracks)):
        raise ValueError(f"similarity must be ({len(tracks)}, {len(tracks)}), got {s.shape}")
    return s


def _cut(dist: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Cluster numbers (0..) of a square distance matrix cut at distance 1 - threshold."""
    if len(dist) == 1:
        return np.zeros(1, dtype=np.int64)
    z = hierarchy_linkage(squareform(dist, checks=False), method=method)
    return fcluster(z, t=1.0 - threshold, criterion="distance").astype(np.int64) - 1


def _canonical(labels: np.ndarray, first_seen: np.ndarray) -> np.ndarray:
    """Identity numbers 0..K-1 in order of each identity's first sighting (ties by track order)."""
    order = np.lexsort((np.arange(len(labels)), first_seen))
    _, first_pos = np.unique(labels[order], return_index=True)
    rank = np.empty(len(first_pos), dtype=np.int64)
    rank[np.argsort(first_pos)] = np.arange(len(first_pos))
    _, code = np.unique(labels, return_inverse=True)
    return rank[code]


def _enforce(labels: np.ndarray, dist: np.ndarray, cl: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Re-cut every cluster that holds a cannot-link pair with complete linkage, its cannot-links set above the
    cut whatever ``CANNOT`` and the threshold are (complete linkage then never merges one)."""
    out, fixed, next_label = labels.copy(), 0, labels.max() + 1 if len(labels) else 0
    above_cut = max(CANNOT, 2 * abs(1.0 - threshold) + 3.0)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        block = cl[np.ix_(members, members)]
        if len(members) < 2 or not block.any():
            continue
        sub = _cut(np.where(block, above_cut, dist[np.ix_(members, members)]), threshold, "complete")
        out[members] = next_label + sub
        next_label += sub.max() + 1
        fixed += 1
    return out, fixed


def link(
    tracks: TrackSet,
    *,
    threshold: float,
    topology: Topology | None = None,
    linkage: str = "average",
    similarity=None,
    constraints: bool = True,
) -> Linking:
    """Identity numbers for ``tracks``: clustered on 1 - similarity (features' inner products, or the given
    (T, T) ``similarity``), cut at ``threshold``; with ``constraints`` (the default) no identity holds a
    cannot-link pair. ``constraints=False`` is appearance alone (a baseline)."""
    if linkage not in LINKAGES:
        raise ValueError(f"linkage is one of {LINKAGES}, got {linkage!r}")
    n, cams = len(tracks), len(set(tracks.camera_id.tolist()))
    if n == 0:
        report = LinkReport(0, 0, 0, threshold, linkage, 0, 0, topology, "no tracks: nothing to link")
        return Linking(np.zeros(0, dtype=np.int64), report)
    s = _similarity(tracks, similarity)
    dist = 1.0 - s.astype(np.float64)  # only the upper triangle is read (squareform): no need to symmetrise
    np.clip(dist, 0.0, 2.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    cl = cannot_link(tracks, topology) if constraints else np.zeros((n, n), dtype=bool)
    dist[cl] = CANNOT
    labels, fixed = _enforce(_cut(dist, threshold, linkage), dist, cl, threshold)
    labels = _canonical(labels, tracks.first_seen)
    k = int(labels.max()) + 1
    note = "one track: one identity" if n == 1 else f"{n} tracks on {cams} camera(s) -> {k} identities"
    if n > 1 and k == n:
        note += " (no two tracks similar enough to link)"
    report = LinkReport(n, k, cams, threshold, linkage, int(np.triu(cl, 1).sum()), fixed, topology, note)
    return Linking(labels, report)


# -- incremental join and relink -----------------------------------------------------------------------------------


def join(
    old: TrackSet,
    old_labels,
    new: TrackSet,
    *,
    threshold: float,
    topology: Topology | None = None,
    linkage: str = "average",
) -> np.ndarray:
    """Identity numbers for ``new`` tracks, the old tracks' identities left as they are.

    The new tracks are taken in order of first sighting; each joins the identity (old, or made by an earlier
    new track) whose linkage similarity to it is highest and at least ``threshold`` (mean over the identity's
    tracks for average linkage, minimum for complete), among those with none of its cannot-links; else it
    starts an identity numbered after every one so far."""
    if linkage not in LINKAGES:
        raise ValueError(f"linkage is one of {LINKAGES}, got {linkage!r}")
    old_labels = np.asarray(old_labels, dtype=np.int64)
    if len(old_labels) != len(old):
        raise ValueError("one label per old track")
    both = old + new
    n_old = len(old)
    labels = np.concatenate([old_labels, np.full(len(new), -1, dtype=np.int64)])
    next_id = int(old_labels.max()) + 1 if n_old else 0
    # Only the new tracks' rows: memory grows with new x all, not all x all.
    s = new.xb @ both.xb.T if len(new) else np.zeros((0, len(both)))
    cl = _cannot(new, both, topology)
    cl[np.arange(len(new)), n_old + np.arange(len(new))] = False
    for i in n_old + np.argsort(new.first_seen, kind="stable"):
        known = labels >= 0
        lab = labels[known]
        if len(lab):
            ids, code = np.unique(lab, return_inverse=True)
            row = s[i - n_old, known].astype(np.float64)
            if linkage == "average":
                score = np.bincount(code, weights=row, minlength=len(ids)) / np.bincount(code, minlength=len(ids))
            else:
                score = np.full(len(ids), np.inf)
                np.minimum.at(score, code, row)
            blocked = np.bincount(code, weights=cl[i - n_old, known], minlength=len(ids)) > 0
            score[blocked] = -np.inf
            best = int(np.argmax(score))
            if score[best] >= threshold:
                labels[i] = ids[best]
                continue
        labels[i] = next_id
        next_id += 1
    return labels[n_old:]


@dataclass(frozen=True)
class RelinkReport:
    """What a full relink changed, in the stable identity ids (``relabel``)."""

    unchanged: int  # identities with exactly the same tracks as before
    merged: tuple[tuple[int, tuple[int, ...]], ...]  # (identity, the old identities it now joins)
    split: tuple[tuple[int, tuple[int, ...]], ...]  # (old identity, the identities its tracks went to)
    new: tuple[int, ...]  # identities of tracks that had none
    removed: tuple[int, ...]  # known identities no track carries any more (erased, or merged away)
    moved_tracks: int  # tracks that had an identity and now carry another


def relabel(old_labels, new_labels, *, known_ids: Iterable[int] | None = None) -> tuple[np.ndarray, RelinkReport]:
    """Stable ids for a relink: each new cluster keeps the old identity it shares most tracks with (one-to-one,
    maximum overlap by scipy's linear_sum_assignment); the others get ids after every id in use or known.

    ``old_labels``: each track's identity before the relink, -1 for a track that had none; ``new_labels``:
    the relink's cluster numbers; ``known_ids``: identities that existed before (so a vanished one is reported)."""
    old = np.asarray(old_labels, dtype=np.int64)
    new = np.asarray(new_labels, dtype=np.int64)
    if old.shape != new.shape:
        raise ValueError("old_labels and new_labels must have one entry per track")
    known = set(old[old >= 0].tolist()) | set(known_ids or ())
    clusters = np.unique(new)
    had = old >= 0
    old_ids = np.unique(old[had])
    overlap = np.zeros((len(clusters), len(old_ids)), dtype=np.int64)
    np.add.at(overlap, (np.searchsorted(clusters, new[had]), np.searchsorted(old_ids, old[had])), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    keep = {int(clusters[r]): int(old_ids[c]) for r, c in zip(rows, cols, strict=True) if overlap[r, c] > 0}
    next_id = max(known, default=-1) + 1
    mapping = {}
    for c in clusters.tolist():
        if c in keep:
            mapping[c] = keep[c]
        else:
            mapping[c], next_id = next_id, next_id + 1
    stable = np.array([mapping[c] for c in new.tolist()], dtype=np.int64)
    return stable, _relink_report(old, stable, known)


def _relink_report(old: np.ndarray, stable: np.ndarray, known: set[int]) -> RelinkReport:
    had = old >= 0
    merged, split, new_ids, unchanged = [], [], [], 0
    for ident in np.unique(stable).tolist():
        members = stable == ident
        sources = np.unique(old[members & had]).tolist()
        if not sources:
            new_ids.append(ident)
        elif len(sources) > 1:
            merged.append((ident, tuple(sources)))
        elif np.array_equal(members & had, old == sources[0]) and not (members & ~had).any():
            unchanged += 1
    for ident in np.unique(old[had]).tolist():
        targets = np.unique(stable[old == ident]).tolist()
        if len(targets) > 1:
            split.append((ident, tuple(targets)))
    removed = tuple(sorted(known - set(stable.tolist())))
    moved = int((had & (stable != old)).sum())
    return RelinkReport(unchanged, tuple(merged), tuple(split), tuple(new_ids), removed, moved)


def relink(
    tracks: TrackSet,
    old_labels,
    *,
    threshold: float,
    topology: Topology | None = None,
    linkage: str = "average",
    known_ids: Iterable[int] | None = None,
) -> tuple[np.ndarray, LinkReport, RelinkReport]:
    """A full relink of ``tracks`` (the ones that exist now: erased tracks are simply not passed, so nothing
    brings them back), in stable ids, with what changed against ``old_labels`` (-1: no identity yet)."""
    result = link(tracks, threshold=threshold, topology=topology, linkage=linkage)
    stable, changes = relabel(old_labels, result.labels, known_ids=known_ids)
    return stable, result.report, changes


# -- topology learning and threshold -------------------------------------------------------------------------------


def _confident_pairs(tracks: TrackSet, s: np.ndarray, confident: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) across cameras, each the other's best match on the other's camera, with similarity >= confident."""
    cams = tracks.camera_id.astype(str)
    names = np.unique(cams)
    best = np.full((len(tracks), len(names)), -1, dtype=np.int64)  # best track of each camera for each track
    for c, name in enumerate(names):
        cols = np.flatnonzero(cams == name)
        best[:, c] = cols[np.argmax(s[:, cols], axis=1)]
    cam_code = np.searchsorted(names, cams)
    i = np.repeat(np.arange(len(tracks)), len(names))
    j = best.ravel()
    keep = (cam_code[i] != cam_code[j]) & (i < j)
    i, j = i[keep], j[keep]
    mutual = best[j, cam_code[i]] == i
    strong = s[i, j] >= confident
    return i[mutual & strong], j[mutual & strong]


def learn_topology(tracks: TrackSet, *, confident: float, similarity=None, min_links: int = 3) -> Topology:
    """Transit times per camera pair from confident links (see the module docstring); a pair with fewer than
    ``min_links`` of them is left out (unconstrained). Tracks of one camera give an empty topology."""
    if len(tracks) < 2:
        return Topology(learned=True)
    s = _similarity(tracks, similarity)
    i, j = _confident_pairs(tracks, s, confident)
    gap = np.maximum(tracks.first_seen[i], tracks.first_seen[j]) - np.minimum(tracks.last_seen[i], tracks.last_seen[j])
    pair_names = [
        cast("tuple[str, str]", tuple(sorted((str(a), str(b)))))
        for a, b in zip(tracks.camera_id[i], tracks.camera_id[j], strict=True)
    ]
    by_pair: dict[tuple[str, str], list[float]] = {}
    for key, g in zip(pair_names, gap.tolist(), strict=True):
        by_pair.setdefault(key, []).append(g)
    pairs = []
    for key in sorted(by_pair):
        gaps = np.asarray(by_pair[key])
        if len(gaps) < min_links:
            continue
        lo = float(gaps.min())
        pairs.append(
            Transit(cameras=key, min_transit_s=lo - SLACK * abs(lo), max_transit_s=float(gaps.max()), links=len(gaps))
        )
    return Topology(pairs=tuple(pairs), learned=True)


def _masked(similarity, labels: Sequence, cannot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(similarity with unlabelled columns, cannot-links and the diagonal at -inf, labels, labelled mask)."""
    s = np.array(similarity, dtype=np.float64)
    lab = np.array([None if x is None else str(x) for x in labels], dtype=object)
    if s.shape != (len(lab), len(lab)):
        raise ValueError("similarity must be (T, T) with one label per track")
    known = np.array([x is not None for x in lab], dtype=bool)
    s[:, ~known] = -np.inf
    np.fill_diagonal(s, -np.inf)
    if cannot is not None:
        s[np.asarray(cannot, dtype=bool)] = -np.inf
    return s, lab, known


def impostor_scores(similarity, labels: Sequence, *, cannot=None) -> np.ndarray:
    """Each labelled track's best similarity to a track of another identity that it could be linked to (-inf
    when there is none): the absent-identity scores of the verdict calibration, from any (T, T) similarity."""
    s, lab, known = _masked(similarity, labels, cannot)
    other = lab[:, None] != lab[None, :]
    return np.where(other, s, -np.inf).max(axis=1, initial=-np.inf)[known]


def calibrate_links(
    similarity, labels: Sequence, fars: Sequence[float] = FARS, *, cannot=None
) -> tuple[OperatingPoint, ...]:
    """The verdict calibration (index.calibration's leave one identity out, its operating points) over labelled
    tracks: a track is an absent-identity probe against the other identities' tracks and, when its identity has
    another track, an enrolled probe against all tracks but itself. With ``cannot`` ((T, T) bool, e.g.
    ``cannot_link``) the pairs the linker may never join are left out of both, so the threshold at a false-link
    rate is the constrained linker's. Unlabelled tracks are never an identity. One operating point per rate,
    ``reliable`` only with ceil(3 / FAR) identities or more."""
    s, lab, known = _masked(similarity, labels, cannot)
    same = lab[:, None] == lab[None, :]
    absent = np.where(~same, s, -np.inf).max(axis=1, initial=-np.inf)[known]
    has_own = (np.where(same, s, -np.inf).max(axis=1, initial=-np.inf) > -np.inf) & known
    best = np.argmax(s[has_own], axis=1) if has_own.any() else np.zeros(0, dtype=np.int64)
    scores = ProbeScores(
        absent=absent,
        absent_identity=lab[known],
        enrolled=s[has_own].max(axis=1, initial=-np.inf) if has_own.any() else np.empty(0),
        enrolled_correct=lab[best] == lab[has_own],
        gallery_identities=len(set(lab[known].tolist())),
        gallery_crops=len(lab),
    )
    return operating_points(scores, fars)


def threshold_for(points: Calibration | Sequence[OperatingPoint], far: float) -> OperatingPoint:
    """The operating point for false-link rate ``far`` (or the nearest stricter one); ValueError when none."""
    cal = (
        points
        if isinstance(points, Calibration)
        else Calibration(
            source="gallery",
            method="leave-one-identity-out",
            top_k=1,
            gallery_identities=0,
            gallery_crops=0,
            operating_points=tuple(points),
        )
    )
    point, _ = choose(cal, far)
    if point is None:
        raise ValueError(f"no operating point at a false-link rate of {far} or stricter")
    return point


if __name__ == "__main__":  # python -m ingestion.link, as documented: the command line lives in ingestion.cli
    import sys

    from ingestion.cli import link_main

    sys.exit(link_main())
