"""What adaptation learns from: a folder of tracked crops (written by ``python -m ingestion.track_dataset``), its
guard rails, the sure negatives and the merging of tracks that look like one person.

The folder holds ``tracks.json`` (see ingestion.track_dataset: one entry per crop with ``file``, ``track_id``,
``camera_id``, ``captured_at``) and the crop files. Training reads it as plain JSON and images: it never opens a
gallery. Pseudo-identities: one per track (the tracker says its crops are one person). Two tracks seen at
overlapping times by one camera are surely two people (one person is not in two places of one frame); tracks of
one person cut apart by an occlusion, or the same person coming back, are merged by clustering the tracks'
mean embeddings with complete linkage, where a sure-negative pair is never merged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "tracks.json"  # the name ingestion.track_dataset writes
CANNOT_LINK = 10.0  # a distance above any cosine distance (at most 2): complete linkage never merges across it


@dataclass(frozen=True)
class TrackCrop:
    path: str
    track: str
    camera: str
    t: float  # Unix seconds


class NotEnoughData(ValueError):  # noqa: N818 (a refusal, named for what is missing)
    """Too few tracks or crops to adapt on; the message says how many were found and how many are needed."""


def read_track_set(folder: str | Path, time_from: float | None = None, time_to: float | None = None) -> list[TrackCrop]:
    """The crops of a track-set folder captured in [time_from, time_to] (the export applied the window already;
    applying it again here means a folder written for a wider window is still cut to the one asked for)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (write it with python -m ingestion.track_dataset)")
    manifest = json.loads(path.read_text())
    crops = []
    for entry in manifest.get("crops", []):
        t = entry.get("captured_at")
        if not entry.get("track_id") or t is None:
            continue
        if (time_from is not None and t < time_from) or (time_to is not None and t > time_to):
            continue
        crops.append(TrackCrop(str(folder / entry["file"]), entry["track_id"], entry.get("camera_id") or "", float(t)))
    return crops


@dataclass(frozen=True)
class Requirements:
    min_tracks: int = 8  # pseudo-identities: a batch draws P of them, and a model learns little from fewer
    min_crops_per_track: int = 2  # a track of one crop has no positive pair: left out
    min_crops: int = 48


def usable_tracks(crops: list[TrackCrop], need: Requirements) -> dict[str, list[TrackCrop]]:
    """The tracks with at least ``min_crops_per_track`` crops, or NotEnoughData with the numbers."""
    by_track: dict[str, list[TrackCrop]] = defaultdict(list)
    for crop in crops:
        by_track[crop.track].append(crop)
    kept = {k: sorted(v, key=lambda c: c.t) for k, v in sorted(by_track.items()) if len(v) >= need.min_crops_per_track}
    n_crops = sum(len(v) for v in kept.values())
    if len(kept) < need.min_tracks or n_crops < need.min_crops:
        raise NotEnoughData(
            f"too little to adapt on: {len(kept)} tracks with at least {need.min_crops_per_track} crops "
            f"({n_crops} crops; {len(by_track) - len(kept)} shorter tracks and {len(crops)} crops in all in the "
            f"window); needed at least {need.min_tracks} such tracks and {need.min_crops} crops. Index more footage "
            "(a longer window, more cameras) or keep more crops per track (--max-crops-per-track)"
        )
    return kept


def sure_negatives(tracks: list[list[TrackCrop]], slack_s: float = 0.0) -> np.ndarray:
    """(T, T) bool: tracks i and j were seen by one camera at overlapping times (spans widened by ``slack_s``)."""
    first = np.array([min(c.t for c in track) for track in tracks]) - slack_s
    last = np.array([max(c.t for c in track) for track in tracks]) + slack_s
    cameras = np.array([track[0].camera for track in tracks])
    overlap = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    negatives = overlap & (cameras[:, None] == cameras[None, :])
    np.fill_diagonal(negatives, False)
    return negatives


def merge_tracks(features: np.ndarray, negatives: np.ndarray, threshold: float) -> np.ndarray:
    """Pseudo-identity per track: tracks whose L2-normalised mean embeddings are within cosine distance
    ``threshold`` of each other (complete linkage: every pair of a cluster) and that no sure-negative pair keeps
    apart share a label. ``threshold`` <= 0: one label per track. Labels are 0..L-1 in order of first track."""
    n = len(features)
    if threshold <= 0 or n < 2:
        return np.arange(n)
    from sklearn.cluster import AgglomerativeClustering  # only when merging: scikit-learn is slow to import

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    distance = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    distance[negatives] = CANNOT_LINK
    np.fill_diagonal(distance, 0.0)
    raw = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="complete", distance_threshold=threshold
    ).fit_predict(distance)
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(label), len(order)) for label in raw])


class TogetherSampler:
    """P x K batches built around a moment: a random pseudo-identity and, first, those surely someone else (seen
    by its camera at the same time), then random others. Such negatives share the scene, the light and the
    camera, so telling them apart teaches the person's appearance, not the place. Iterates like PKBatchSampler
    (lists of sample indices; ``set_epoch`` reshuffles); an identity with fewer than K crops repeats some."""

    def __init__(self, labels: list[int], negatives: np.ndarray, p: int, k: int, seed: int = 0):
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.by_label[label].append(index)
        self.negatives, self.p, self.k, self.seed, self.epoch = negatives, p, k, seed, 0
        self.batches = max(1, len(labels) // (p * k))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        labels = np.array(sorted(self.by_label))
        for _ in range(self.batches):
            anchor = int(rng.choice(labels))
            together = rng.permutation(np.flatnonzero(self.negatives[anchor]))[: self.p - 1]
            rest = rng.permutation(np.setdiff1d(labels, np.append(together, anchor)))
            chosen = [anchor, *together.tolist(), *rest[: self.p - 1 - len(together)].tolist()]
            batch = []
            for label in chosen:
                pool = self.by_label[label]
                batch += rng.choice(pool, self.k, replace=len(pool) < self.k).tolist()
            yield batch


def label_negatives(track_negatives: np.ndarray, labels_of_track: np.ndarray) -> np.ndarray:
    """(L, L) bool: pseudo-identities with at least one sure-negative pair of tracks between them."""
    n = int(labels_of_track.max()) + 1
    out = np.zeros((n, n), bool)
    i, j = np.nonzero(track_negatives)
    out[labels_of_track[i], labels_of_track[j]] = True
    np.fill_diagonal(out, False)
    return out
