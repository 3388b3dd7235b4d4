"""python -m export.import_detector MODEL.onnx --out DIR [--kind auto|tf_ssd|yolo] [--reference REF.npz] ...

Imports a person detector's ONNX graph as a detector artifact (see export/import_detector/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.artifact import REPORT_FILE
from export.import_detector import DetectorOptions, import_detector
from export.parity import GateError
from formats.detections import UndecodableOutput


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 300x300, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.import_detector", description=__doc__.split("\n\n")[1])
    p.add_argument("model", type=Path, help="the detector's ONNX graph")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write (replaced when it exists)")
    p.add_argument("--kind", choices=["auto", "tf_ssd", "yolo"], default="auto", help="output decoding")
    p.add_argument("--reference", type=Path, help="the source framework's answers (.npz) for the parity check")
    p.add_argument("--score-threshold", type=float, help="default 0.2 (tf_ssd), 0.25 (yolo)")
    p.add_argument("--nms-iou", type=float, help="default 0.5 (tf_ssd), 0.7 (yolo)")
    p.add_argument("--person-class", type=int, help="default 1 (tf_ssd, COCO labels), 0 (yolo)")
    p.add_argument("--input-size", type=_size, help="HxW the frames are resized to (needed for a free-size input)")
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--source", default="", help="where the weights came from (kept in the spec)")
    args = p.parse_args(argv)
    options = DetectorOptions(
        kind=args.kind,
        score_threshold=args.score_threshold,
        nms_iou=args.nms_iou,
        person_class=args.person_class,
        input_size=args.input_size,
        max_detections=args.max_detections,
        source=args.source,
    )
    try:
        out = import_detector(args.model, args.out, options, args.reference)
    except UndecodableOutput as exc:
        print(f"export.import_detector: refused: {exc}", file=sys.stderr)
        return 2
    except GateError as exc:
        print(f"export.import_detector: {exc}\n{json.dumps(exc.report, indent=2)}", file=sys.stderr)
        return 1
    report = json.loads((out / REPORT_FILE).read_text())
    print(f"detector artifact {out} ({report['detector_id']}); parity: {json.dumps(report['parity'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
