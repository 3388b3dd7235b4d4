"""The model spec: what a served embedding model expects and returns.

export/ writes it (spec.json, the ONNX metadata_props key ``reid_spec``, the Triton config parameter
``reid_spec``); server/ and index/ read it. It is the only place the serving side learns the input
size, layout, dimension or model_id from, so nothing about the model is duplicated as a constant.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION = 1
SPEC_KEY = "reid_spec"  # key in ONNX metadata_props and in Triton's config.pbtxt parameters


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    name: str = "images"
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    color: Literal["RGB"] = "RGB"
    dtype: Literal["uint8", "float32"] = "uint8"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    resize: Literal["bilinear"] = "bilinear"  # cv2.INTER_LINEAR, see formats/images.py


class NormalizationSpec(_Frozen):
    in_graph: bool = True
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class OutputSpec(_Frozen):
    name: str = "embeddings"
    dtype: Literal["float32"] = "float32"
    dim: int = Field(gt=0)
    l2_normalized: bool = True


class ThresholdSpec(_Frozen):
    """Calibrated "same person" cut: cosine similarity >= score is a match, measured at false-positive rate fpr."""

    score: float
    fpr: float


class Provenance(_Frozen):
    dataset: str = ""
    rank1: float | None = None
    mAP: float | None = None  # noqa: N815 (the field name everyone in ReID uses)
    exported_at: str = ""
    code_version: str = ""


class ModelSpec(_Frozen):
    spec_version: int = SPEC_VERSION
    model_id: str = Field(min_length=1)
    architecture: str
    input: InputSpec
    normalization: NormalizationSpec
    output: OutputSpec
    metric: Literal["inner_product"] = "inner_product"
    flip_tta: bool = True
    max_batch_size: int = Field(gt=0)
    threshold: ThresholdSpec | None = None
    provenance: Provenance = Provenance()

    @property
    def dim(self) -> int:
        return self.output.dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image input shape in the model's layout, without the batch axis."""
        h, w = self.input.height, self.input.width
        return (h, w, 3) if self.input.layout == "NHWC" else (3, h, w)

    def to_json(self) -> str:
        return self.model_dump_json(indent=None)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        data = json.loads(text)
        version = data.get("spec_version")
        if version != SPEC_VERSION:
            raise ValueError(f"model spec version {version!r} is not supported (this server reads {SPEC_VERSION})")
        return cls.model_validate(data)
