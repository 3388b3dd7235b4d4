"""benchmarks.video on a short real clip: speed per stage, coverage and held-out search for each tracker variant."""

import json

from benchmarks.video import main
from tests.footage import needs_vtest, toy_embedder, vtest_frames, write_clip


@needs_vtest
def test_video_bench_compares_tracker_variants_on_the_same_boxes(tmp_path):
    clip = write_clip(tmp_path / "clip.avi", vtest_frames(60, start=100))
    artifact = toy_embedder(tmp_path / "embedder")
    out = tmp_path / "video.json"
    argv = ["--video", str(clip), "--detector", "motion", "--artifact", str(artifact), "--out", str(out)]
    assert main(argv + ["--variants", "current,match_0.7"]) == 0
    report = json.loads(out.read_text())
    variants = report["tracker_variants"]
    assert set(variants) == {"current", "match_0.7"}
    assert variants["current"]["settings"]["matching_threshold"] == 0.8
    assert variants["match_0.7"]["settings"]["matching_threshold"] == 0.7
    for quality in variants.values():
        assert quality["stored_tracks"] > 0 and quality["coverage"]["confident_boxes"] > 0
        assert quality["held_out_search"]["queries"] == len(quality["held_out_search"]["rows"]) > 0
    assert report["coverage"] == variants["current"]["coverage"]
    assert report["end_to_end_fps"] > 0 and report["frames"] == 60
