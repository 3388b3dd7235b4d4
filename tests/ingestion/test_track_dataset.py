"""A gallery's kept crops of tracks in a time window -> the folder adaptation reads (ingestion.track_dataset)."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from index.backends import open_gallery
from index.crops import CropStore, content_hash
from index.records import Record
from ingestion.track_dataset import MANIFEST, export_tracks
from training.adapt_data import read_track_set

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def _jpeg(value: int) -> bytes:
    image = np.full((32, 16, 3), value, np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture
def gallery(tmp_path) -> Path:
    """Three tracks at t0 + 0..9 s, one item without a track, one track crop not kept, one without a time."""
    folder = tmp_path / "gallery"
    crops = CropStore.open(folder / "crops")
    records, vectors = [], []
    for n in range(12):
        data = _jpeg(10 * n + 5)
        digest = crops.put(data) if n != 11 else content_hash(data)  # the last crop is not kept
        track = None if n == 9 else f"cam1:t{n % 3}"
        captured = None if n == 10 else T0 + n
        records.append(Record(camera_id="cam1", captured_at=captured, track_id=track, content_hash=digest))
        vectors.append(np.eye(4, dtype=np.float32)[n % 4])
    with open_gallery(folder, model_id="m", dim=4) as g:
        g.add(np.stack(vectors), records, model_id="m")
    return folder


def test_the_window_and_the_reasons_are_honoured(gallery, tmp_path):
    summary = export_tracks(gallery, tmp_path / "out", time_from=T0 + 2, time_to=T0 + 8)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    times = [e["captured_at"] for e in manifest["crops"]]
    assert times == [T0 + n for n in range(2, 9)]
    assert summary.crops == 7 and summary.tracks == 3
    assert summary.skipped == {"outside the window": 3, "no track": 1, "no capture time": 1}
    for entry in manifest["crops"]:
        assert (tmp_path / "out" / entry["file"]).is_file()
        assert entry["track_id"].startswith("cam1:t") and entry["camera_id"] == "cam1"
    # what training reads back: the same crops, and a narrower window cuts them again
    assert len(read_track_set(tmp_path / "out")) == 7
    assert [c.t for c in read_track_set(tmp_path / "out", time_to=T0 + 4)] == [T0 + 2, T0 + 3, T0 + 4]


def test_a_crop_that_was_not_kept_is_counted(gallery, tmp_path):
    summary = export_tracks(gallery, tmp_path / "out")
    assert summary.skipped["crop not kept"] == 1
    assert summary.crops == 9  # 12 less no track, no time, not kept


def test_refusals(gallery, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(FileExistsError):
        export_tracks(gallery, tmp_path / "busy")
    done = subprocess.run(
        [sys.executable, "-m", "ingestion.track_dataset", "--gallery", str(gallery), "--out", str(tmp_path / "o")]
        + ["--crops-dir", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "keeps no crops" in done.stderr


def test_command_line_window(gallery, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ingestion.track_dataset", "--gallery", str(gallery), "--out", str(tmp_path / "o")]
        + ["--time-to", "2027-01-15T08:00:03Z"],  # T0 + 3 s
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "4 crops of 3 tracks" in done.stdout
