"""Crop choice per track: sharper, whole, uncovered, person-shaped crops rank higher; at most K, spread in time."""

from __future__ import annotations

import cv2
import numpy as np

from ingestion.video.crops import CropSettings, TrackCrops, candidate, occlusion

SETTINGS = CropSettings(max_crops=3, min_height=40, spread_s=1.0)


def _frame(seed: int = 0) -> np.ndarray:
    """A textured 240x320 frame (sharp edges everywhere)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_NEAREST)


def _quality(frame, xyxy, score=0.9, covered=0.0):
    c = candidate(frame, np.array(xyxy, np.float32), score, 0, 0.0, 0.0, SETTINGS, covered)
    return None if c is None else c.quality


def test_quality_prefers_sharp_whole_uncovered_person_shaped_boxes():
    frame = _frame()
    person = [100, 60, 140, 160]  # 40 x 100: a standing person's shape, inside the frame
    best = _quality(frame, person)
    assert _quality(cv2.GaussianBlur(frame, (15, 15), 5), person) < best
    assert _quality(frame, [0, 60, 40, 160]) < best  # cut by the frame's left edge
    assert _quality(frame, [100, 60, 200, 160]) < best  # as wide as tall: not a standing person
    assert _quality(frame, person, covered=0.3) < best
    assert _quality(frame, person, score=0.5) < best
    assert _quality(frame, [100, 60, 140, 90]) is None  # 30 px tall: too small
    assert _quality(frame, person, covered=0.5) is None  # half hidden


def test_occlusion_is_the_share_another_box_covers_not_the_box_itself():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], np.float32)
    np.testing.assert_allclose(occlusion(boxes, boxes), [0.5, 0.5, 0.0])
    assert occlusion(boxes[:0], boxes).shape == (0,)


def test_a_track_keeps_at_most_k_crops_spread_in_time_in_time_order():
    frame, track = _frame(), TrackCrops(SETTINGS)
    rng = np.random.default_rng(0)
    for index in range(100):  # 10 s at 10 fps, qualities at random
        track.see(index)
        c = candidate(
            frame, np.array([100, 60, 140, 160], np.float32), float(rng.uniform(0.3, 1)), index, index / 10, 0, SETTINGS
        )
        track.offer(c)
    assert len(track.buckets) <= 4 * SETTINGS.max_crops  # memory is bounded whatever the track's length
    chosen = track.choose()
    assert len(chosen) == 3
    times = [c.time_s for c in chosen]
    assert times == sorted(times) and min(np.diff(times)) >= SETTINGS.spread_s
    best = max(track.buckets.values(), key=lambda c: c.quality)
    assert best in chosen
