"""Real footage and detectors for the video tests: Debian's vtest.avi, short clips cut from it, the SSDLite artifact.

vtest.avi (opencv-doc; .ci/run installs it) is a real street scene: 768x576, 10 fps, 795 frames. The SSDLite
detector artifact needs TensorFlow to convert, which lives only in the throwaway environment ``make detector``
builds (.venv-detector). The tests that need it take, in order: REID_TEST_DETECTOR (a ready artifact), the artifact
``make detector`` wrote (artifacts/detector; CI runs ``make detector`` before the tests), or a conversion in
.venv-detector; elsewhere they skip and say why.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from formats.detector_spec import DETECTOR_SPEC_FILE

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DETECTOR_VENV = ROOT / ".venv-detector"
MADE_DETECTOR = ROOT / "artifacts" / "detector"  # what `make detector` writes (its DETECTOR default)

needs_vtest = pytest.mark.skipif(
    not VTEST.is_file(), reason="vtest.avi is missing: apt-get install opencv-doc (.ci/run installs it)"
)


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """RGB frames -> an MJPG .avi OpenCV reads back."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def vtest_frames(count: int, start: int = 0) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(count):
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def toy_embedder(folder: Path) -> Path:
    """An embedder artifact with the contract's I/O (a fixed random projection of a 32x16 crop)."""
    from tests.support import make_spec, write_toy_onnx

    spec = make_spec(model_id="toy-video", height=32, width=16, dim=32, max_batch=16)
    write_toy_onnx(folder / "model.onnx", spec)
    (folder / "spec.json").write_text(spec.to_json())
    return folder


@functools.cache
def _ssdlite(folder: str) -> Path | str:
    """The SSDLite artifact built once per test run, or why it cannot be."""
    if os.environ.get("REID_TEST_DETECTOR"):
        return Path(os.environ["REID_TEST_DETECTOR"])
    if (MADE_DETECTOR / DETECTOR_SPEC_FILE).is_file():
        return MADE_DETECTOR
    python = DETECTOR_VENV / "bin" / "python"
    if not python.is_file():
        return (
            "the SSDLite detector is not built: run `make detector` (artifacts/detector; its TensorFlow lives only in "
            "the throwaway .venv-detector), or name a ready artifact in REID_TEST_DETECTOR"
        )
    out = Path(folder)
    convert = [str(python), "-m", "export.detector_tf", "--out", str(out / "tf"), "--frames", "4"]
    if VTEST.is_file():
        convert += ["--video", str(VTEST)]
    subprocess.run(convert, cwd=ROOT, check=True, capture_output=True, timeout=600)
    subprocess.run(
        [sys.executable, "-m", "export.import_detector", str(out / "tf" / "model.onnx"), "--kind", "tf_ssd"]
        + ["--reference", str(out / "tf" / "reference.npz"), "--out", str(out / "detector")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out / "detector"


def ssdlite_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Call from a session fixture: the artifact, or a skip that says why."""
    built = _ssdlite(str(tmp_path_factory.getbasetemp() / "ssdlite"))
    if isinstance(built, str):
        pytest.skip(built)
    return built
