"""One vector per track from its crops' embeddings: a quality-weighted mean, re-normalised.

Numpy in, numpy out. A track's crops are not equally good: a small, blurred or half-occluded box (the detector
is less sure of it) embeds further from the person's other crops. Weighting each crop by its quality before
averaging keeps a few bad crops from pulling the track's vector away; the plain mean is the special case of equal
qualities (crops added over HTTP with no box or score). On synthetic truth (benchmarks/linking.py) the weighted
mean beats the plain mean, and both beat the track-to-track maximum over crop pairs (DeepSORT's min distance),
which one look-alike crop is enough to fool.

Quality of a crop, from its item metadata (each factor 1 when its field is absent):

    quality = score * min(1, max(MIN_SIZE, height / ref_height)) * sharpness / (sharpness + sharp_half)

``score`` is the detector's, ``height`` the box's height in source pixels (``box`` is ``[x, y, w, h]``) and
``sharpness`` the variance of the crop's Laplacian where the footage path measured it.

API::

    crop_quality(score=None, box=None, sharpness=None, *, ref_height=128.0, sharp_half=100.0) -> (N,) float64
    track_feature(x, quality=None) -> (D,) float32        # one track: weighted mean, L2-normalised
    pool(x, track_index, n_tracks, quality=None, *, method="weighted") -> (T, D) float32   # "weighted" | "mean"
    max_similarity(x, track_index, n_tracks) -> (T, T) float32    # max over crop pairs, the baseline
    TrackFeature.empty(dim).add(x, quality) -> TrackFeature  # running sum: kept up to date as crops arrive
        .vector  .weight  .n
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SIZE = 0.1  # a tiny box still counts a little: a track made only of tiny boxes keeps a vector
EPS = 1e-12
CHUNK_TRACKS = 256  # max_similarity: tracks per block of crop rows


def _column(values, n: int | None, name: str) -> np.ndarray | None:
    if values is None:
        return None
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1 or (n is not None and len(out) != n):
        raise ValueError(f"{name} must be one value per crop, got shape {out.shape}")
    return out


def crop_quality(
    score=None, box=None, sharpness=None, *, ref_height: float = 128.0, sharp_half: float = 100.0
) -> np.ndarray:
    """Quality in (0, 1] of each crop from what its metadata holds (the module docstring gives the formula)."""
    boxes = None if box is None else np.asarray(box, dtype=np.float64)
    if boxes is not None and (boxes.ndim != 2 or boxes.shape[1] != 4):
        raise ValueError(f"box must be (N, 4) [x, y, w, h], got shape {boxes.shape}")
    sizes = [len(v) for v in (score, sharpness) if v is not None] + ([len(boxes)] if boxes is not None else [])
    if not sizes:
        raise ValueError("crop_quality needs at least one of score, box, sharpness")
    n = sizes[0]
    q = np.ones(n)
    s = _column(score, n, "score")
    if s is not None:
        q *= np.clip(s, EPS, 1.0)
    if boxes is not None:
        if len(boxes) != n:
            raise ValueError("box must be one row per crop")
        q *= np.clip(boxes[:, 3] / ref_height, MIN_SIZE, 1.0)
    sh = _column(sharpness, n, "sharpness")
    if sh is not None:
        sh = np.maximum(sh, 0.0)
        q *= np.maximum(sh / (sh + sharp_half), EPS)
    return q


def _normalise(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norm, EPS)).astype(np.float32)


def _weights(quality, n: int) -> np.ndarray:
    if quality is None:
        return np.ones(n)
    w = np.asarray(quality, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("quality must be one finite, non-negative value per crop")
    return w


def track_feature(x, quality=None) -> np.ndarray:
    """The quality-weighted mean of one track's crop embeddings (N, D), L2-normalised; the plain mean without
    qualities (or when they are all zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"a track needs at least one crop embedding (N, D), got shape {x.shape}")
    w = _weights(quality, len(x))
    if w.sum() <= 0:
        w = np.ones(len(x))
    return _normalise(w.astype(np.float32) @ x)


def _track_index(track_index, n: int, n_tracks: int) -> np.ndarray:
    idx = np.asarray(track_index, dtype=np.int64)
    if idx.shape != (n,):
        raise ValueError("track_index must be one track number per crop")
    if n and (idx.min() < 0 or idx.max() >= n_tracks):
        raise ValueError(f"track_index must lie in [0, {n_tracks})")
    if len(np.unique(idx)) != n_tracks:
        raise ValueError("every track needs at least one crop")
    return idx


def pool(x, track_index, n_tracks: int, quality=None, *, method: str = "weighted") -> np.ndarray:
    """(T, D) track features from crop embeddings (N, D) and each crop's track number in [0, T).

    ``method``: "weighted" (quality-weighted mean; plain where ``quality`` is None) or "mean" (qualities
    ignored). Both re-normalised. A track whose qualities are all zero falls back to its plain mean."""
    if method not in ("weighted", "mean"):
        raise ValueError(f"method is 'weighted' or 'mean', got {method!r}")
    x = np.asarray(x, dtype=np.float32)
    idx = _track_index(track_index, len(x), n_tracks)
    w = _weights(None if method == "mean" else quality, len(x))
    total = np.bincount(idx, weights=w, minlength=n_tracks)
    w = np.where(total[idx] > 0, w, 1.0)  # all-zero tracks: plain mean
    sums = np.zeros((n_tracks, x.shape[1]), dtype=np.float64)
    np.add.at(sums, idx, w[:, None] * x)
    return _normalise(sums)


def max_similarity(x, track_index, n_tracks: int) -> np.ndarray:
    """(T, T) track-to-track similarity as the best inner product over their crop pairs (the baseline that
    DeepSORT's nearest-neighbour gallery uses). Built in blocks of tracks, so memory stays at a block of crop
    rows times all crops."""
    x = np.asarray(x, dtype=np.float32)
    idx = _track_index(track_index, len(x), n_tracks)
    order = np.argsort(idx, kind="stable")
    xs, ids = x[order], idx[order]
    starts = np.searchsorted(ids, np.arange(n_tracks))  # first crop of each track in sorted order
    ends = np.append(starts[1:], len(ids))
    out = np.empty((n_tracks, n_tracks), dtype=np.float32)
    for t0 in range(0, n_tracks, CHUNK_TRACKS):
        t1 = min(t0 + CHUNK_TRACKS, n_tracks)
        rows = xs[starts[t0] : ends[t1 - 1]] @ xs.T  # crops of tracks t0..t1 x all crops
        per_col_track = np.maximum.reduceat(rows, starts, axis=1)  # crops x tracks
        out[t0:t1] = np.maximum.reduceat(per_col_track, starts[t0:t1] - starts[t0], axis=0)
    return out


@dataclass(frozen=True)
class TrackFeature:
    """A track's running quality-weighted sum: adding crops as they arrive gives exactly ``track_feature`` of
    all of them, so a store keeps (sum, weight, n) and never re-reads old crops."""

    wsum: np.ndarray  # (D,) float64: the quality-weighted sum
    xsum: np.ndarray  # (D,) float64: the plain sum, for a track whose qualities are all zero
    weight: float
    n: int

    @classmethod
    def empty(cls, dim: int) -> TrackFeature:
        return cls(np.zeros(dim, dtype=np.float64), np.zeros(dim, dtype=np.float64), 0.0, 0)

    def add(self, x, quality=None) -> TrackFeature:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(self.wsum):
            raise ValueError(f"crop embeddings of dim {x.shape[1]} for a track of dim {len(self.wsum)}")
        w = _weights(quality, len(x))
        return TrackFeature(self.wsum + w @ x, self.xsum + x.sum(axis=0), self.weight + float(w.sum()), self.n + len(x))

    @property
    def vector(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("a track with no crops has no feature")
        return _normalise(self.wsum if self.weight > 0 else self.xsum)
