"""People tracks within one video: supervision's ByteTrack over the detector's boxes.

ByteTrack's ids are local to one run of one tracker; ``track_key`` makes them unique in a gallery by hashing the
camera, the source and the run's start time into the id, so indexing the same file again with the same start
gives the same ids (and its crops the same bytes, which the write pipeline keeps once), while two videos, two
cameras or two runs of one stream never share a track id.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from formats.detections import Boxes

with warnings.catch_warnings():
    # supervision 0.28+ marks ByteTrack as moving to the `trackers` package, which needs numpy 2 (ours is < 2).
    warnings.simplefilter("ignore", FutureWarning)
    import supervision as sv


@dataclass(frozen=True)
class TrackerSettings:
    # ByteTrack's two tiers: detections above this are matched first and (above this + 0.1) start tracks; weaker
    # ones (down to the detector's own threshold) only continue a track, e.g. a person half hidden for a moment.
    activation_threshold: float = 0.4
    lost_seconds: float = 2.0  # a track unseen this long is over
    matching_threshold: float = 0.8  # ByteTrack's IoU-cost gate for matching boxes to tracks
    min_frames: int = 3  # tracks seen in fewer frames are noise (a flicker of the detector): not stored


@dataclass(frozen=True)
class TrackedBox:
    local_id: int
    xyxy: np.ndarray  # (4,) float32, source pixels
    score: float


def track_key(camera_id: str, source: str, start: float) -> str:
    """The part of a track id shared by one run over one source: 10 hex digits of sha256(camera, source, start)."""
    return hashlib.sha256(f"{camera_id}\0{source}\0{start:.3f}".encode()).hexdigest()[:10]


def track_id(camera_id: str, key: str, local_id: int) -> str:
    return f"{camera_id}-{key}-{local_id}"


class PeopleTracker:
    """Boxes of one frame in, the tracked boxes with their ByteTrack ids out (frames in order, at ``fps``)."""

    def __init__(self, fps: float, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        # ByteTrack keeps a lost track for frame_rate / 30 * lost_track_buffer frames.
        buffer = max(1, round(self.settings.lost_seconds * 30))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # see the import
            self._tracker = self._bytetrack(buffer, fps)
        self.max_lost_frames = max(1, round(self.settings.lost_seconds * fps))

    def _bytetrack(self, buffer: int, fps: float) -> sv.ByteTrack:
        return sv.ByteTrack(
            track_activation_threshold=self.settings.activation_threshold,
            lost_track_buffer=buffer,
            minimum_matching_threshold=self.settings.matching_threshold,
            frame_rate=max(fps, 1e-3),
            minimum_consecutive_frames=1,
        )

    def update(self, boxes: Boxes) -> list[TrackedBox]:
        detections = sv.Detections(
            xyxy=boxes.xyxy.astype(np.float32).reshape(-1, 4),
            confidence=boxes.scores.astype(np.float32),
            class_id=np.zeros(len(boxes), dtype=int),
        )
        tracked = self._tracker.update_with_detections(detections)
        if tracked.tracker_id is None:
            return []
        scores = tracked.confidence if tracked.confidence is not None else np.ones(len(tracked))
        return [
            TrackedBox(int(tid), tracked.xyxy[i].astype(np.float32), float(scores[i]))
            for i, tid in enumerate(tracked.tracker_id)
        ]
