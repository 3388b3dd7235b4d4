"""A detector's input and output, read from its spec: frame -> input tensor, raw outputs -> person boxes.

One module for both sides that need it: export.import_detector (checking a converted graph against its source
framework) and the detector runtime (embedders/detector.py). Boxes leave here in the source frame's pixels as
``xyxy`` (x0, y0, x1, y1), clipped to the frame, with non-maximum suppression done by OpenCV's NMSBoxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from formats.detector_spec import DetectorSpec

LETTERBOX_GREY = 114  # Ultralytics' padding value


class UndecodableOutput(ValueError):  # noqa: N818 (reads as what it is: an output this code cannot decode)
    """The graph's outputs do not have the layout the spec's decoding reads."""


@dataclass(frozen=True)
class Boxes:
    """Person boxes in source pixels: xyxy float32 (N, 4), scores float32 (N,), best score first."""

    xyxy: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Boxes:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


@dataclass(frozen=True)
class InputTransform:
    """input pixel = source pixel * scale + pad (per axis); the inverse maps boxes back to the source."""

    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0
    source_w: int = 0
    source_h: int = 0

    def to_source(self, xyxy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.source_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.source_h)
        return out


def prepare(frame: np.ndarray, spec: DetectorSpec) -> tuple[np.ndarray, InputTransform]:
    """An RGB uint8 frame (H, W, 3) -> the model's input tensor with a batch axis of 1, and the transform."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    src_h, src_w = frame.shape[:2]
    inp = spec.input
    if inp.resize == "stretch":
        image = cv2.resize(frame, (inp.width, inp.height), interpolation=cv2.INTER_LINEAR)
        transform = InputTransform(inp.width / src_w, inp.height / src_h, source_w=src_w, source_h=src_h)
    else:
        scale = min(inp.width / src_w, inp.height / src_h)
        new_w, new_h = round(src_w * scale), round(src_h * scale)
        pad_x, pad_y = (inp.width - new_w) // 2, (inp.height - new_h) // 2
        image = np.full((inp.height, inp.width, 3), LETTERBOX_GREY, np.uint8)
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        image[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
        transform = InputTransform(new_w / src_w, new_h / src_h, pad_x, pad_y, src_w, src_h)
    if inp.color == "BGR":
        image = image[:, :, ::-1]
    tensor = image.astype(np.float32) * inp.scale if inp.dtype == "float32" else image
    if inp.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None]), transform


def decode(outputs: list[np.ndarray], spec: DetectorSpec, transform: InputTransform) -> Boxes:
    """Raw outputs (in ``spec.outputs`` order, batch of 1) -> person boxes in source pixels after NMS."""
    if spec.decoding == "tf_ssd":
        xyxy, scores = _tf_ssd_candidates(outputs, spec)
    elif spec.decoding == "yolo":
        xyxy, scores = _yolo_candidates(outputs, spec)
    else:  # pragma: no cover - the spec's Literal refuses any other value
        raise UndecodableOutput(f"unknown decoding {spec.decoding!r}")
    if len(scores) == 0:
        return Boxes.empty()
    xyxy = transform.to_source(xyxy)
    return nms(xyxy, scores, spec.nms_iou, spec.max_detections)


def _tf_ssd_candidates(outputs: list[np.ndarray], spec: DetectorSpec) -> tuple[np.ndarray, np.ndarray]:
    check_tf_ssd_shapes([o.shape for o in outputs])
    num, boxes, scores, classes = (np.asarray(o)[0] for o in outputs)
    n = int(np.asarray(num).reshape(-1)[0])
    boxes, scores, classes = boxes[:n], scores[:n].astype(np.float32), np.rint(classes[:n]).astype(np.int64)
    keep = (classes == spec.person_class) & (scores >= spec.score_threshold)
    y0, x0, y1, x1 = boxes[keep].T.astype(np.float32)
    w, h = spec.input.width, spec.input.height
    return np.stack([x0 * w, y0 * h, x1 * w, y1 * h], axis=1), scores[keep]


def _yolo_candidates(outputs: list[np.ndarray], spec: DetectorSpec) -> tuple[np.ndarray, np.ndarray]:
    check_yolo_shape(outputs[0].shape, spec.person_class)
    rows = np.asarray(outputs[0][0], np.float32).T  # (N, 4 + classes)
    scores = rows[:, 4 + spec.person_class]
    keep = scores >= spec.score_threshold
    cx, cy, w, h = rows[keep, :4].T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), scores[keep]


def check_tf_ssd_shapes(shapes: list[tuple]) -> None:
    """num (1,) or (1, 1), boxes (1, M, 4), scores (1, M), classes (1, M); else UndecodableOutput."""
    if len(shapes) != 4:
        raise UndecodableOutput(f"tf_ssd decoding reads 4 outputs (num, boxes, scores, classes), got {len(shapes)}")
    num, boxes, scores, classes = (tuple(s) for s in shapes)
    ok = (
        len(boxes) == 3
        and boxes[-1] == 4
        and len(scores) == 2
        and len(classes) == 2
        and scores[1] == classes[1] == boxes[1]
        and len(num) in (1, 2)
    )
    if not ok:
        raise UndecodableOutput(
            f"tf_ssd decoding reads num (1,), boxes (1, M, 4), scores (1, M), classes (1, M); got {shapes}"
        )


def check_yolo_shape(shape: tuple, person_class: int) -> None:
    """(1, 4 + classes, N) with N > 4 + classes (anchors outnumber channels); else UndecodableOutput."""
    shape = tuple(shape)
    if len(shape) != 3 or shape[0] != 1:
        raise UndecodableOutput(f"yolo decoding reads one output (1, 4 + classes, N), got shape {shape}")
    channels, anchors = shape[1], shape[2]
    if isinstance(channels, int) and isinstance(anchors, int):
        if channels == 6 or anchors in (5, 6) or channels > anchors:
            raise UndecodableOutput(
                f"output {shape} looks like rows of (x, y, w, h[, score, class]) per box (an export with NMS or "
                "transposed), not Ultralytics' (1, 4 + classes, N) without NMS; export with nms=False, "
                "end2end=False"
            )
        if channels < 5 + person_class:
            raise UndecodableOutput(
                f"output {shape} has {channels - 4} class columns; the person class {person_class} needs "
                f"at least {person_class + 1}"
            )


def nms(xyxy: np.ndarray, scores: np.ndarray, iou: float, max_detections: int) -> Boxes:
    """Non-maximum suppression with OpenCV, best score first, at most max_detections; degenerate boxes dropped."""
    w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    sane = (w >= 1) & (h >= 1)
    xyxy, scores, w, h = xyxy[sane], scores[sane], w[sane], h[sane]
    if len(scores) == 0:
        return Boxes.empty()
    xywh = np.stack([xyxy[:, 0], xyxy[:, 1], w, h], axis=1)
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, float(iou), top_k=max_detections)
    keep = np.asarray(kept, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]
    return Boxes(np.ascontiguousarray(xyxy[keep], np.float32), np.ascontiguousarray(scores[keep], np.float32))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (N, 4) with every box of b (M, 4), xyxy -> (N, M)."""
    a, b = np.asarray(a, np.float64)[:, None, :], np.asarray(b, np.float64)[None, :, :]
    iw = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    ih = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    inter = iw * ih
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area - inter, 1e-9)
