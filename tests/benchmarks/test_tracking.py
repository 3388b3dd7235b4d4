"""benchmarks.synth_video's truth is exact, and benchmarks.tracking scores a tracker against it with motmetrics."""

import json

import numpy as np
import pytest

from benchmarks.synth_video import VideoSettings, write_dataset
from benchmarks.tracking import Sequence, accumulate, load_sequences, main, score
from ingestion.video.tracking import TrackerSettings

SMALL = VideoSettings(cameras=2, seconds=12, width=320, height=180, passes_per_minute=30, pairs=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth-video"), SMALL, seed=3)


def test_the_truth_boxes_are_the_people_drawn(data):
    (cam1, cam2) = load_sequences(data)
    passes = json.loads((data / "identities.json").read_text())["passes"]
    assert len(cam1.frames) == len(cam2.frames) == 120 and cam1.fps == 10
    assert {str(pid) for s in (cam1, cam2) for f in s.truth for pid, _, _ in f} == set(passes)
    assert any(p["partner"] is not None for p in passes.values())
    background = np.median(np.stack(cam1.frames[::4]), axis=0)  # people move; the median is the scene
    for frame, truth in zip(cam1.frames, cam1.truth, strict=True):
        for _, (x0, y0, x1, y1), counted in truth:
            assert 0 <= x0 < x1 <= SMALL.width and 0 <= y0 < y1 <= SMALL.height
            if not counted:
                continue
            inside = np.abs(
                frame[int(y0) : int(y1), int(x0) : int(x1)].astype(int)
                - background[int(y0) : int(y1), int(x0) : int(x1)]
            )
            assert inside.max() > 60  # something was drawn in the box


def test_a_perfect_tracker_scores_one_and_a_swap_is_counted(data):
    seq = load_sequences(data)[0]
    perfect = [[(pid, box) for pid, box, ok in f if ok] for f in seq.truth]
    result = score([seq], {seq.name: perfect}, TrackerSettings())["overall"]
    assert result["idf1"] == 1.0 and result["mota"] == 1.0 and result["num_switches"] == 0 and result["purity"] == 1.0
    # A person in view at the half-way frame gets a new track id from there on: one ID switch, counted for them.
    half = next(i for i in range(len(perfect) // 2, len(perfect)) if perfect[i] and perfect[i - 1])
    a = next(pid for pid, _ in perfect[half] if pid in {q for q, _ in perfect[half - 1]})
    renamed = [[(10_000 if pid == a and i >= half else pid, box) for pid, box in f] for i, f in enumerate(perfect)]
    acc, _ = accumulate(Sequence(seq.name, seq.frames, seq.fps, seq.truth, set()), renamed)
    switched = acc.mot_events[acc.mot_events["Type"] == "SWITCH"]["OId"]
    assert list(switched) == [a]


def test_the_benchmark_runs_the_motion_detector_and_tracker(data, tmp_path):
    out = tmp_path / "tracking.json"
    assert main(["--data", str(data), "--variants", "current,lost_1s", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    motion = report["detectors"]["motion"]["variants"]
    assert set(motion) == {"current", "lost_1s"}
    assert motion["current"]["overall"]["idf1"] > 0 and motion["current"]["tracks"] > 0
