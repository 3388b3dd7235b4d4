"""Which crops of a track are stored: the best few by quality, spread over the track's time.

A crop's quality multiplies ingestion.track_features.crop_quality (the detector's score, the box's height against
``ref_height``, the sharpness as the variance of the crop's Laplacian: the same figure the track vectors weight
by) with two factors of a box's shape that the detector's score misses: how far its width/height ratio is from a
standing person's (``aspect``, about 0.41), whether the frame's edge cuts it (``edge_penalty``), and how much of it
another person's box covers (``1 - occlusion``: a crop of two people embeds as neither, and is where a tracker
swaps ids). Boxes smaller than ``min_height`` pixels or covered more than ``max_occlusion`` are never candidates.

Each live track holds at most one candidate per ``spread_s`` seconds of its time, and at most ``4 * max_crops``
candidates (the worst dropped first), so memory stays bounded however long a track lives. When the track ends,
``choose`` takes the best ``max_crops`` candidates, skipping any closer than ``spread_s`` to one already taken
while others are left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ingestion.track_features import crop_quality

POOL_FACTOR = 4


@dataclass(frozen=True)
class CropSettings:
    max_crops: int = 8  # per track (K)
    min_height: int = 40  # pixels: a smaller person has too few pixels for re-identification
    ref_height: float = 128.0  # a box this tall or taller has full size quality (the embedder's input height)
    aspect: float = 0.41  # a standing person's width/height
    aspect_tolerance: float = 0.5  # in log ratio: the quality factor is exp(-(log(r / aspect) / tol)^2 / 2)
    edge_margin: int = 2  # pixels: a box this close to the frame's border is cut by it
    edge_penalty: float = 0.5
    spread_s: float = 1.0
    margin: float = 0.0  # context kept around the box, as a fraction of its size
    max_occlusion: float = 0.4  # share of the box another person's box may cover


@dataclass
class Candidate:
    frame: int
    time_s: float
    wall: float
    box: tuple[int, int, int, int]  # x, y, w, h in source pixels
    score: float
    sharpness: float
    quality: float
    image: np.ndarray  # uint8 RGB crop


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (a blurred or tiny crop scores low)."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def occlusion(targets: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each target box (N, 4), the largest share of its area that one of the other boxes (M, 4) covers; a box
    of ``others`` that is the target itself (IoU above 0.9: a tracker returns the detection it matched) is skipped."""
    if len(targets) == 0 or len(others) == 0:
        return np.zeros(len(targets))
    a, b = targets[:, None, :], others[None, :, :]
    iw = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    ih = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    inter = iw * ih
    area_a = ((targets[:, 2] - targets[:, 0]) * (targets[:, 3] - targets[:, 1])).clip(1e-6)[:, None]
    area_b = ((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])).clip(1e-6)[None, :]
    itself = inter / (area_a + area_b - inter) > 0.9
    return np.where(itself, 0.0, inter / area_a).max(axis=1)


def candidate(
    frame: np.ndarray,
    xyxy: np.ndarray,
    score: float,
    index: int,
    time_s: float,
    wall: float,
    s: CropSettings,
    covered: float = 0.0,
) -> Candidate | None:
    """The crop of one tracked box with its quality, or None when the box is too small or too covered to store."""
    if covered > s.max_occlusion:
        return None
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    mx, my = (x1 - x0) * s.margin, (y1 - y0) * s.margin
    x0, y0 = max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my))
    x1, y1 = min(fw, math.ceil(x1 + mx)), min(fh, math.ceil(y1 + my))
    w, h = x1 - x0, y1 - y0
    if h < s.min_height or w < 4:
        return None
    image = np.ascontiguousarray(frame[y0:y1, x0:x1])
    sharp = sharpness(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    base = float(crop_quality([score], [[x0, y0, w, h]], [sharp], ref_height=s.ref_height)[0])
    shape = math.exp(-0.5 * (math.log((w / h) / s.aspect) / s.aspect_tolerance) ** 2)
    m = s.edge_margin
    cut = x0 <= m or y0 <= m or x1 >= fw - m or y1 >= fh - m
    quality = base * shape * (1.0 - covered) * (s.edge_penalty if cut else 1.0)
    return Candidate(index, time_s, wall, (x0, y0, w, h), score, sharp, quality, image)


@dataclass
class TrackCrops:
    """The candidates of one live track: one per time bucket of ``spread_s``, at most POOL_FACTOR * max_crops."""

    settings: CropSettings
    first_frame: int = -1
    last_frame: int = -1
    frames_seen: int = 0
    buckets: dict[int, Candidate] = field(default_factory=dict)

    def see(self, frame: int) -> None:
        if self.first_frame < 0:
            self.first_frame = frame
        self.last_frame = frame
        self.frames_seen += 1

    def offer(self, c: Candidate) -> None:
        bucket = int(c.time_s // self.settings.spread_s) if self.settings.spread_s > 0 else c.frame
        held = self.buckets.get(bucket)
        if held is None or c.quality > held.quality:
            self.buckets[bucket] = c
        if len(self.buckets) > POOL_FACTOR * self.settings.max_crops:
            worst = min(self.buckets, key=lambda b: self.buckets[b].quality)
            del self.buckets[worst]

    def choose(self) -> list[Candidate]:
        """The best max_crops candidates, spread in time, in time order."""
        ranked = sorted(self.buckets.values(), key=lambda c: (-c.quality, c.frame))
        chosen: list[Candidate] = []
        for c in ranked:
            if len(chosen) == self.settings.max_crops:
                break
            if all(abs(c.time_s - o.time_s) >= self.settings.spread_s for o in chosen):
                chosen.append(c)
        for c in ranked:  # fewer well-spread candidates than max_crops: fill with the next best
            if len(chosen) == self.settings.max_crops:
                break
            if c not in chosen:
                chosen.append(c)
        return sorted(chosen, key=lambda c: c.frame)
