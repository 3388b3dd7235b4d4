"""The detector spec: what a served person detector expects and how its outputs are read.

export.import_detector writes it (``detector.json`` and the ONNX metadata_props key ``reid_detector``); the
detector runtime (embedders/detector.py) reads it from the ONNX file, so the file alone is enough to serve, as with
the embedder's model spec. It is a different key from the embedder's ``reid_spec`` on purpose: a detector given
where an embedder is expected (or the reverse) is refused by name, never run with the wrong decoding.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DETECTOR_SPEC_VERSION = 1
DETECTOR_SPEC_KEY = "reid_detector"  # key in ONNX metadata_props
DETECTOR_SPEC_FILE = "detector.json"

# How the raw outputs become boxes (formats/detections.py decodes each):
#   tf_ssd:  TensorFlow Object Detection API post-processed outputs: num_detections (1,), detection_boxes (1, M, 4)
#            as [y0, x0, y1, x1] in 0-1 of the input, detection_scores (1, M), detection_classes (1, M), NMS done
#   yolo:    Ultralytics YOLO (v5u/v8/v11) export: one output (1, 4 + classes, N) with centre x, centre y, width,
#            height in input pixels and one score column per class, no NMS
Decoding = Literal["tf_ssd", "yolo"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorInput(_Frozen):
    name: str
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    color: Literal["RGB", "BGR"] = "RGB"
    dtype: Literal["uint8", "float32"] = "uint8"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    # stretch: resized to height x width ignoring aspect (what the TF OD API's fixed_shape_resizer does);
    # letterbox: scaled to fit, centred, padded with grey 114 (what Ultralytics does)
    resize: Literal["stretch", "letterbox"] = "stretch"
    scale: float = Field(default=1.0, gt=0)  # float inputs are pixel * scale (1/255 for YOLO)


class DetectorSpec(_Frozen):
    spec_version: int = DETECTOR_SPEC_VERSION
    kind: Literal["detector"] = "detector"
    detector_id: str = Field(min_length=1)  # architecture + weights hash
    architecture: str
    input: DetectorInput
    outputs: tuple[str, ...] = Field(min_length=1)  # the graph outputs to fetch, in the order the decoding reads
    decoding: Decoding
    person_class: int = Field(ge=0)  # the class id of "person" in the model's own numbering
    score_threshold: float = Field(default=0.3, ge=0, le=1)
    nms_iou: float = Field(default=0.5, gt=0, le=1)  # applied after decoding (again for tf_ssd: harmless)
    max_detections: int = Field(default=100, gt=0)
    source: str = ""  # where the weights came from (package, file)
    imported_at: str = ""

    def to_json(self) -> str:
        return self.model_dump_json(indent=None)

    @classmethod
    def from_json(cls, text: str | bytes) -> DetectorSpec:
        data = json.loads(text)
        version = data.get("spec_version") if isinstance(data, dict) else None
        if version != DETECTOR_SPEC_VERSION:
            raise ValueError(f"detector spec version {version!r} is not supported (this code reads 1)")
        return cls.model_validate(data)
