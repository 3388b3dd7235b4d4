"""The detectors on real footage: MOG2 motion and the SSDLite artifact find the people of vtest.avi, and agree."""

from __future__ import annotations

import numpy as np
import pytest

from embedders.detector import DetectorError, MotionDetector, create_detector
from formats.detections import box_iou
from tests.footage import needs_vtest, ssdlite_artifact, vtest_frames


@pytest.fixture(scope="session")
def ssdlite(tmp_path_factory):
    return ssdlite_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def frames():
    return vtest_frames(60)


def _people_boxes(detector, frames):
    detector.start()
    return [detector.detect(f) for f in frames]


@needs_vtest
def test_motion_finds_moving_people_after_learning_the_background(frames):
    boxes = _people_boxes(MotionDetector(warmup=10), frames)
    assert all(len(b) == 0 for b in boxes[:10])  # the background is being learned
    counts = [len(b) for b in boxes[20:]]
    assert min(counts) >= 1 and np.median(counts) >= 2  # vtest always has several people walking
    for b in boxes[20:]:
        w, h = b.xyxy[:, 2] - b.xyxy[:, 0], b.xyxy[:, 3] - b.xyxy[:, 1]
        assert (h > w).all()  # standing people: taller than wide
        assert (b.xyxy[:, [0, 2]] <= 768).all() and (b.xyxy[:, [1, 3]] <= 576).all()


@needs_vtest
def test_ssdlite_finds_the_people_motion_finds(ssdlite, frames):
    ssd = _people_boxes(create_detector(ssdlite), frames)
    motion = _people_boxes(MotionDetector(warmup=10), frames)
    assert np.median([len(b) for b in ssd]) >= 3
    # A moving blob the size of a person is a person in vtest: most have an SSD box over them.
    matched = total = 0
    for s, m in zip(ssd[20:], motion[20:], strict=True):
        if len(m) and len(s):
            matched += int((box_iou(m.xyxy, s.xyxy).max(axis=1) >= 0.3).sum())
        total += len(m)
    assert matched / total >= 0.6


def test_a_detector_must_be_started_and_must_exist(tmp_path):
    with pytest.raises(DetectorError, match="not started"):
        MotionDetector().detect(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DetectorError, match="no detector"):
        create_detector(tmp_path / "missing")
