"""python -m ingestion.video on real footage (vtest.avi) and on bad input: tracks stored with their crops'
camera, time, track, frame and box; a rerun stores nothing twice; a cut file keeps what was read; no person,
an unreadable file or an embedder given as the detector are refused with a clear message and exit status."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import numpy as np
import pytest

from embedders.base import create_embedder
from embedders.detector import MotionDetector, create_detector
from index import open_gallery
from index.crops import CropStore
from ingestion.pipeline import WritePipeline
from ingestion.video import CropSettings, VideoOptions, index_video
from ingestion.video.__main__ import main
from ingestion.video.frames import FrameReader
from tests.footage import VTEST, needs_vtest, ssdlite_artifact, toy_embedder, vtest_frames, write_clip

START = "2026-12-07T14:00:00+00:00"
START_S = datetime.fromisoformat(START).timestamp()


@pytest.fixture(scope="module")
def embedder_artifact(tmp_path_factory):
    return toy_embedder(tmp_path_factory.mktemp("toy") / "embedder")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The first 12 s of vtest.avi (a few people cross the street)."""
    if not VTEST.is_file():
        pytest.skip("vtest.avi is missing: apt-get install opencv-doc (.ci/run installs it)")
    return write_clip(tmp_path_factory.mktemp("clip") / "vtest12s.avi", vtest_frames(120))


def _run(source, gallery_dir, embedder_artifact, detector, options, crops=None):
    async def go():
        embedder = create_embedder("onnx", artifact=embedder_artifact)
        await embedder.start()
        try:
            spec = embedder.spec
            with open_gallery(gallery_dir, model_id=spec.model_id, dim=spec.dim) as gallery:
                pipeline = WritePipeline(gallery, embedder, crops=crops)
                summary = await index_video(source, pipeline, detector, options)
                return summary, gallery.records(list(range(1, len(gallery) + 1)))
        finally:
            await embedder.close()

    detector.start()
    return asyncio.run(go())


@needs_vtest
def test_vtest_is_indexed_as_tracks_with_motion(tmp_path, embedder_artifact):
    options = VideoOptions(camera_id="street", start=START_S, max_frames=150, crops=CropSettings(max_crops=4))
    crops = CropStore.open(tmp_path / "crops", 10**8)
    summary, records = _run(str(VTEST), tmp_path / "g", embedder_artifact, MotionDetector(), options, crops)
    assert summary.frames == 150 and summary.detections > 150 and not summary.truncated
    assert summary.tracks >= 3 and summary.crops == len(records) > summary.tracks
    by_track: dict[str, list] = {}
    for r in records.values():
        by_track.setdefault(r.track_id, []).append(r)
        x, y, w, h = r.metadata["box"]
        assert 0 <= x < x + w <= 768 and 0 <= y < y + h <= 576 and h >= CropSettings.min_height
        assert r.person_id is None and r.camera_id == "street" and r.source == str(VTEST)
        assert r.captured_at == pytest.approx(START_S + r.metadata["frame"] / 10, abs=1e-3)
        assert 0 < r.metadata["score"] <= 1 and r.metadata["quality"] > 0
        assert crops.get(r.content_hash) is not None  # kept before the add
    assert sorted(by_track) == sorted(summary.track_ids)
    assert all(len(items) <= 4 for items in by_track.values())
    assert all(t.startswith("street-") for t in by_track)


@needs_vtest
def test_indexing_the_same_video_again_stores_nothing_twice(tmp_path, embedder_artifact, clip):
    options = VideoOptions(camera_id="c1", start=START_S, max_frames=80)
    first, records = _run(str(clip), tmp_path / "g", embedder_artifact, MotionDetector(), options)
    again, after = _run(str(clip), tmp_path / "g", embedder_artifact, MotionDetector(), options)
    assert first.crops > 0 and again.crops == 0 and again.duplicates == first.crops
    assert after == records


@needs_vtest
def test_ssdlite_tracks_vtest(tmp_path_factory, tmp_path, embedder_artifact, clip):
    detector = create_detector(ssdlite_artifact(tmp_path_factory))
    summary, records = _run(str(clip), tmp_path / "g", embedder_artifact, detector, VideoOptions("c1", START_S))
    assert summary.frames == 120 and summary.detections >= 3 * 120  # several people in every frame
    assert summary.tracks >= 5 and len({r.track_id for r in records.values()}) == summary.tracks


def _cli(tmp_path, source, embedder_artifact, *extra):
    return main(
        [str(source), "--gallery", str(tmp_path / "g"), "--artifact", str(embedder_artifact), "--camera", "c1"]
        + ["--start", START, "--no-progress", "--summary-json", str(tmp_path / "summary.json"), *extra]
    )


@needs_vtest
def test_a_cut_file_keeps_what_was_read(tmp_path, embedder_artifact, capsys):
    whole = write_clip(tmp_path / "whole.avi", vtest_frames(200))
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    assert _cli(tmp_path, cut, embedder_artifact, "--detector", "motion") == 1
    out = capsys.readouterr().out
    assert "ended early" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["truncated"] and 60 < summary["frames"] < 200 and summary["crops"] > 0
    with open_gallery(tmp_path / "g") as gallery:
        assert len(gallery) == summary["crops"]


def test_no_person_found_is_exit_3_with_nothing_stored(tmp_path, embedder_artifact, capsys):
    still = write_clip(tmp_path / "still.avi", [np.full((120, 160, 3), 90, np.uint8)] * 30)
    assert _cli(tmp_path, still, embedder_artifact, "--detector", "motion") == 3
    assert "no person found in 30 frames" in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["detections"] == 0


def test_an_unreadable_video_is_refused(tmp_path, embedder_artifact, capsys):
    bogus = tmp_path / "notes.avi"
    bogus.write_text("not a video")
    assert _cli(tmp_path, bogus, embedder_artifact, "--detector", "motion") == 2
    assert "cannot open" in capsys.readouterr().err
    assert _cli(tmp_path, tmp_path / "missing.avi", embedder_artifact, "--detector", "motion") == 2
    assert "no video file" in capsys.readouterr().err


def test_an_embedder_artifact_as_the_detector_is_refused(tmp_path, embedder_artifact, capsys):
    still = write_clip(tmp_path / "still.avi", [np.full((120, 160, 3), 90, np.uint8)] * 3)
    assert _cli(tmp_path, still, embedder_artifact, "--detector", str(embedder_artifact)) == 2
    assert "embedder artifact" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # refused before the gallery was opened


@needs_vtest
def test_a_stream_that_stops_keeps_what_was_acknowledged(tmp_path, embedder_artifact, clip):
    options = VideoOptions(camera_id="c1", live=True, queue_frames=256)  # a stream that ends after 12 s
    summary, records = _run(str(clip), tmp_path / "g", embedder_artifact, MotionDetector(), options)
    assert "stopped sending frames" in (summary.error or "")
    assert summary.crops == len(records) > 0
    assert all(abs(r.captured_at - time.time()) < 600 for r in records.values())  # a stream's clock


@needs_vtest
def test_a_live_source_drops_frames_it_cannot_keep_up_with(clip):
    reader = FrameReader(str(clip), queue_size=2, live=True)
    taken = 0
    for _ in reader:
        taken += 1
        time.sleep(0.05)  # a consumer slower than the reader
    reader.close()
    assert reader.status.read == 120
    assert reader.status.dropped > 0 and taken == 120 - reader.status.dropped
