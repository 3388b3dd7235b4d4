"""export.import_detector: YOLO and TF SSD layouts decode to source pixels, a layout it cannot read is refused, the
parity check catches a graph that disagrees with its source, and the artifact serves through embedders.detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedders.detector import NotADetector, create_detector
from export.import_detector import DetectorOptions, import_detector
from export.import_detector.__main__ import main
from export.parity import GateError
from formats.detections import UndecodableOutput
from formats.detector_spec import DETECTOR_SPEC_FILE, DetectorSpec
from tests.export.detector_graphs import write_constant_detector, yolo_output

PERSON_ROWS = [
    (32, 32, 16, 24, 0, 0.9),  # a person
    (33, 32, 16, 24, 0, 0.6),  # the same person again, lower: NMS drops it
    (10, 40, 8, 12, 0, 0.4),  # another person
    (50, 20, 10, 10, 1, 0.95),  # not a person (class 1)
    (50, 50, 10, 20, 0, 0.1),  # a person below the threshold
]


def test_yolo_boxes_come_back_in_source_pixels_through_the_letterbox(tmp_path):
    onnx_path = write_constant_detector(tmp_path / "yolo.onnx", yolo_output(PERSON_ROWS))
    out = import_detector(onnx_path, tmp_path / "det", DetectorOptions(source="hand-made"))
    spec = DetectorSpec.from_json((out / DETECTOR_SPEC_FILE).read_text())
    assert (spec.decoding, spec.person_class, spec.input.layout, spec.input.resize) == ("yolo", 0, "NCHW", "letterbox")
    assert json.loads((out / "export_report.json").read_text())["parity"] == {"checked": False}

    detector = create_detector(out)
    detector.start()
    # A 128x64 (W x H) frame in a 64x64 input: scale 0.5, 16 rows of padding above and below.
    boxes = detector.detect(np.zeros((64, 128, 3), np.uint8))
    expected = [
        [(32 - 8) / 0.5, (32 - 12 - 16) / 0.5, (32 + 8) / 0.5, (32 + 12 - 16) / 0.5],
        [(10 - 4) / 0.5, (40 - 6 - 16) / 0.5, (10 + 4) / 0.5, (40 + 6 - 16) / 0.5],
    ]
    np.testing.assert_allclose(boxes.xyxy, expected, atol=1e-4)
    np.testing.assert_allclose(boxes.scores, [0.9, 0.4], atol=1e-6)


def test_the_score_threshold_and_person_class_are_settings(tmp_path):
    onnx_path = write_constant_detector(tmp_path / "yolo.onnx", yolo_output(PERSON_ROWS))
    options = DetectorOptions(score_threshold=0.5, person_class=1)
    detector = create_detector(import_detector(onnx_path, tmp_path / "det", options))
    detector.start()
    boxes = detector.detect(np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(boxes.scores, [0.95], atol=1e-6)


@pytest.mark.parametrize(
    ("output", "why"),
    [
        (np.zeros((1, 300, 6), np.float32), "with NMS"),  # an end-to-end export: rows of (x0, y0, x1, y1, score, class)
        (np.zeros((1, 8400, 84), np.float32), "transposed"),  # rows per anchor instead of columns
        (np.zeros((1, 4), np.float32), "cannot decode"),  # not a detector's output at all
    ],
)
def test_a_layout_it_cannot_decode_is_refused_and_nothing_is_written(tmp_path, output, why):
    onnx_path = write_constant_detector(tmp_path / "other.onnx", output)
    with pytest.raises(UndecodableOutput, match=why):
        import_detector(onnx_path, tmp_path / "det")
    assert not (tmp_path / "det").exists()


def test_the_command_line_refuses_with_a_message_and_exit_code(tmp_path, capsys):
    onnx_path = write_constant_detector(tmp_path / "other.onnx", np.zeros((1, 300, 6), np.float32))
    assert main([str(onnx_path), "--out", str(tmp_path / "det")]) == 2
    assert "refused" in capsys.readouterr().err


def _reference(path, images, output):
    np.savez(path, images=images, output0=np.repeat(output, len(images), axis=0)[:, None])
    return path


def test_parity_passes_against_the_same_answers_and_fails_against_others(tmp_path):
    output = yolo_output(PERSON_ROWS)
    onnx_path = write_constant_detector(tmp_path / "yolo.onnx", output)
    images = np.zeros((2, 64, 64, 3), np.uint8)
    same = _reference(tmp_path / "same.npz", images, output)
    out = import_detector(onnx_path, tmp_path / "det", reference=same)
    parity = json.loads((out / "export_report.json").read_text())["parity"]
    assert parity["passed"] and parity["boxes"] == 4 and parity["worst_iou"] == 1.0

    moved = yolo_output([(x + 3, *rest) for x, *rest in PERSON_ROWS])
    with pytest.raises(GateError, match="IoU"):
        import_detector(onnx_path, tmp_path / "det2", reference=_reference(tmp_path / "moved.npz", images, moved))
    assert not (tmp_path / "det2").exists()


def test_an_embedder_artifact_is_not_a_detector(tmp_path):
    from tests.support import make_spec, write_toy_onnx

    artifact = tmp_path / "embedder"
    write_toy_onnx(artifact / "model.onnx", make_spec())
    (artifact / "spec.json").write_text(make_spec().to_json())
    with pytest.raises(NotADetector, match="embedder artifact"):
        create_detector(artifact)
    detector = create_detector(artifact / "model.onnx")  # the bare file: refused by its metadata at start
    with pytest.raises(NotADetector, match="embedder artifact"):
        detector.start()
