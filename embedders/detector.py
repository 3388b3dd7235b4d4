"""Person detectors: an RGB frame in, person boxes in the frame's pixels out.

``OnnxDetector`` serves a detector artifact (export.import_detector: model.onnx with its ``reid_detector`` spec in
the ONNX metadata) through ONNX Runtime in-process, with the session settings the embedder uses. ``MotionDetector``
needs no weights: OpenCV's MOG2 background subtraction, for fixed cameras (moving blobs of a person's size and
shape; it cannot tell a person from a car). ``create_detector("motion" | artifact folder | model.onnx)`` picks one.

A detector is stateful only where it must be (MOG2 learns the background): give each video its own detector.
``detect`` is blocking (call it from a worker thread); it is not thread-safe for one instance.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from embedders.onnx import default_providers, session_options
from formats.detections import Boxes, UndecodableOutput, decode, nms, prepare
from formats.detector_spec import DETECTOR_SPEC_FILE, DETECTOR_SPEC_KEY, DetectorSpec
from formats.spec import SPEC_KEY

MOTION = "motion"


class DetectorError(Exception):
    """A detector could not be loaded or run."""


class NotADetector(DetectorError):  # noqa: N818 (reads as the refusal it is)
    """The artifact given as a detector is something else (an embedder, an unknown ONNX graph)."""


class Detector(ABC):
    """``detect(frame)``: uint8 RGB (H, W, 3) -> person Boxes in that frame's pixels."""

    name: str

    def start(self) -> None:  # noqa: B027 (a hook: a detector without weights needs nothing)
        """Load weights or sessions (no I/O in constructors); raises DetectorError."""

    @abstractmethod
    def detect(self, frame: np.ndarray) -> Boxes: ...

    def close(self) -> None:  # noqa: B027 (a hook, as start)
        """Release the session."""


class OnnxDetector(Detector):
    def __init__(self, model_path: Path | str, *, intra_op_threads: int | None = None, providers=None) -> None:
        self.model_path = Path(model_path)
        self.intra_op_threads = intra_op_threads
        self.providers = providers
        self.spec: DetectorSpec | None = None
        self._session: ort.InferenceSession | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.spec.architecture if self.spec is not None else str(self.model_path)

    def start(self) -> None:
        if not self.model_path.is_file():
            raise DetectorError(f"no ONNX model at {self.model_path}")
        try:
            session = ort.InferenceSession(
                str(self.model_path),
                session_options(self.intra_op_threads),
                providers=self.providers or default_providers(),
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise DetectorError(f"onnxruntime cannot load {self.model_path}: {exc}") from exc
        self.spec = detector_spec_of(session, self.model_path)
        names = {o.name for o in session.get_outputs()}
        missing = [o for o in self.spec.outputs if o not in names]
        if missing or self.spec.input.name not in {i.name for i in session.get_inputs()}:
            raise NotADetector(
                f"{self.model_path}: the graph lacks the spec's input {self.spec.input.name!r} or outputs {missing}"
            )
        self._session = session

    def detect(self, frame: np.ndarray) -> Boxes:
        if self._session is None or self.spec is None:
            raise DetectorError("detector not started")
        tensor, transform = prepare(frame, self.spec)
        try:
            outputs = self._session.run(list(self.spec.outputs), {self.spec.input.name: tensor})
        except Exception as exc:
            raise DetectorError(f"onnxruntime failed: {exc}") from exc
        try:
            return decode(outputs, self.spec, transform)
        except UndecodableOutput as exc:
            raise DetectorError(f"{self.model_path}: {exc}") from exc

    def close(self) -> None:
        self._session = None


def detector_spec_of(session: ort.InferenceSession, path: Path) -> DetectorSpec:
    """The detector spec in the ONNX metadata; an embedder's or no spec is refused by name."""
    meta = session.get_modelmeta().custom_metadata_map
    text = meta.get(DETECTOR_SPEC_KEY)
    if not text:
        if SPEC_KEY in meta:
            raise NotADetector(
                f"{path} is an embedder artifact (it carries {SPEC_KEY!r}), not a detector; pass it as --artifact "
                "and give --detector a detector artifact (python -m export.import_detector) or 'motion'"
            )
        raise NotADetector(
            f"{path} has no {DETECTOR_SPEC_KEY!r} metadata: import it with python -m export.import_detector"
        )
    try:
        return DetectorSpec.from_json(text)
    except ValueError as exc:
        raise NotADetector(f"{path}: the {DETECTOR_SPEC_KEY!r} metadata is not a valid detector spec: {exc}") from exc


class MotionDetector(Detector):
    """Moving blobs of a standing person's shape, from OpenCV's MOG2 background model (fixed cameras only).

    The first ``warmup`` frames only teach the background. A blob is a person candidate when its height is at least
    ``min_height`` (a fraction of the frame height) and its width/height lies in ``aspect``; its score is the fill
    of its box by foreground pixels. Shadows (MOG2 marks them 127) are not foreground.
    """

    name = MOTION

    def __init__(
        self,
        *,
        history: int = 200,
        var_threshold: float = 25.0,
        warmup: int = 10,
        min_height: float = 0.08,
        aspect: tuple[float, float] = (0.2, 0.9),
        nms_iou: float = 0.3,
    ) -> None:
        self.history, self.var_threshold, self.warmup = history, var_threshold, warmup
        self.min_height, self.aspect, self.nms_iou = min_height, aspect, nms_iou
        self._mog: cv2.BackgroundSubtractorMOG2 | None = None
        self._seen = 0
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def start(self) -> None:
        self._mog = cv2.createBackgroundSubtractorMOG2(self.history, self.var_threshold, detectShadows=True)
        self._seen = 0

    def detect(self, frame: np.ndarray) -> Boxes:
        if self._mog is None:
            raise DetectorError("detector not started")
        mask = self._mog.apply(frame)
        self._seen += 1
        if self._seen <= self.warmup:
            return Boxes.empty()
        fg: np.ndarray = np.where(mask == 255, 255, 0).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._kernel)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self._kernel, iterations=2)
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        x, y, w, h, area = (stats[1:, i].astype(np.float32) for i in range(5))
        lo, hi = self.aspect
        keep = (h >= self.min_height * frame.shape[0]) & (w >= lo * h) & (w <= hi * h)
        if not keep.any():
            return Boxes.empty()
        xyxy = np.stack([x, y, x + w, y + h], axis=1)[keep]
        scores = (area / np.maximum(w * h, 1))[keep].clip(0, 1)
        return nms(xyxy, scores.astype(np.float32), self.nms_iou, 100)


def create_detector(detector: str | Path, **options) -> Detector:
    """Build (not start) a detector: "motion", a detector artifact folder (model.onnx + detector.json), or a
    .onnx file with the detector spec in its metadata. ``options`` go to the detector's constructor."""
    if str(detector) == MOTION:
        return MotionDetector(**options)
    path = Path(detector)
    if path.is_dir():
        if not (path / DETECTOR_SPEC_FILE).is_file():
            kind = "an embedder artifact (spec.json)" if (path / "spec.json").is_file() else "not a detector artifact"
            raise NotADetector(
                f"{path} is {kind}: a detector artifact holds {DETECTOR_SPEC_FILE} and model.onnx "
                "(python -m export.import_detector), or use --detector motion"
            )
        _check_spec_file(path / DETECTOR_SPEC_FILE)
        path = path / "model.onnx"
    elif not path.exists():
        raise DetectorError(f"no detector at {path} (a detector artifact folder, a .onnx file or 'motion')")
    return OnnxDetector(path, **options)


def _check_spec_file(path: Path) -> None:
    try:
        DetectorSpec.from_json(path.read_text())
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise NotADetector(f"{path} is not a valid detector spec: {exc}") from exc
