"""The model spec: what a served embedding model expects and returns.

export/ writes it (spec.json, the ONNX metadata_props key ``reid_spec``, the Triton config parameter
``reid_spec``); server/ and index/ read it. It is the only place the serving side learns the input
size, layout, dimension or model_id from, so nothing about the model is duplicated as a constant.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# 2 added the identity-level calibration (``calibration``); a version-1 spec (pair-level ``threshold`` only) still
# reads, with no calibration. 3 added the gated variants (``variants``); an older spec reads with none recorded.
SPEC_VERSION = 3
READABLE_SPEC_VERSIONS = (1, 2, 3)
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
    """Calibrated "same person" cut: cosine similarity >= score is a match, measured at false-positive rate fpr.

    A pair-level rate (one query image against one gallery image): kept for older readers. The verdict the server
    gives is about identities, and comes from ``Calibration``.
    """

    score: float
    fpr: float


class OperatingPoint(_Frozen):
    """One point of the open-set identification trade-off, measured on probes of enrolled and of absent people.

    With the best identity score of a search (the server's identity aggregation over its top k hits): ``far`` is
    the fraction of absent-identity probes scoring >= threshold, ``dir`` the fraction of enrolled probes whose own
    identity is ranked first with a score >= threshold. ``threshold`` is the lowest score whose measured FAR is at
    most ``target_far``. ``reliable`` says whether there were enough absent identities to estimate that FAR at
    all (index/calibration.py: ``identities_needed``).
    """

    target_far: float = Field(gt=0, lt=1)
    threshold: float
    dir: float = Field(ge=0, le=1)
    far: float = Field(ge=0, le=1)
    absent_identities: int = Field(ge=0)
    absent_probes: int = Field(ge=0)
    enrolled_probes: int = Field(ge=0)
    reliable: bool


class Calibration(_Frozen):
    """Operating points of the "match / unknown" verdict and what they were measured on.

    ``source``: "artifact" (the evaluation split at export, in the spec) or "gallery" (leave-one-identity-out over
    a user's gallery, stored in it). ``gallery_identities`` / ``gallery_crops``: the size of the gallery the probes
    were searched in; a false-alarm rate grows with the number of identities a probe can be confused with.
    """

    source: Literal["artifact", "gallery"]
    method: Literal["identity-split", "leave-one-identity-out"]
    top_k: int = Field(gt=0)
    gallery_identities: int = Field(ge=0)
    gallery_crops: int = Field(ge=0)
    dataset: str = ""
    measured_at: str = ""
    seed: int | None = None
    operating_points: tuple[OperatingPoint, ...] = ()


class Provenance(_Frozen):
    dataset: str = ""
    rank1: float | None = None
    mAP: float | None = None  # noqa: N815 (the field name everyone in ReID uses)
    exported_at: str = ""
    code_version: str = ""


class Retrieval(_Frozen):
    """rank-1 and mAP of one query set searched in one gallery (the export's evaluation split)."""

    rank1: float = Field(ge=0, le=1)
    mAP: float = Field(ge=0, le=1)  # noqa: N815


class VariantGate(_Frozen):
    """What a variant's own gate measured against the fp32 model (the fp32 model: against its source network).

    ``retrieval``: the variant's queries in a gallery it embedded itself; ``mAP_drop``: fp32's mAP minus that;
    ``min_cosine`` / ``max_abs_diff``: the variant's embeddings of the gate's crops and random images against the
    reference's. A figure the gate did not measure is None. ``rule``: what passing meant, in words.
    """

    rule: str = ""
    retrieval: Retrieval | None = None
    mAP_drop: float | None = None  # noqa: N815
    min_cosine: float | None = None
    max_abs_diff: float | None = None


class CrossVariantGate(_Frozen):
    """Whether a variant's embeddings may share a gallery with the fp32 model's, measured in both directions.

    ``queries_in_fp32_gallery``: this variant's queries searched in the gallery embedded by fp32 (a gallery built
    with fp32, searched by a server running this variant); ``fp32_queries_in_gallery``: the reverse (items added by
    this variant, searched by fp32). ``mAP_drop`` is the larger drop of the two against fp32 queries in an fp32
    gallery; ``passed`` when it is at most ``max_mAP_drop``.
    """

    queries_in_fp32_gallery: Retrieval
    fp32_queries_in_gallery: Retrieval
    mAP_drop: float  # noqa: N815
    rank1_drop: float
    max_mAP_drop: float  # noqa: N815
    passed: bool


class VariantSpeed(_Frozen):
    """Median latency of one run, measured by the export on its own host (a figure to compare, not a promise)."""

    device: Literal["cpu", "gpu"]
    threads: int = Field(ge=0)  # 0: the runtime's default
    batch: int = Field(gt=0)
    latency_ms: float = Field(gt=0)
    batch1_latency_ms: float | None = None
    speedup_vs_fp32: float | None = None
    batch1_speedup_vs_fp32: float | None = None


class VariantSpec(_Frozen):
    """One runnable form of the model in the artifact, and whether it passed its gate.

    ``file`` is relative to the artifact folder; None when the variant failed its gate and was not kept. ``device``:
    where it is meant to run ("any" for the fp32 ONNX file). Every variant computes embeddings comparable with the
    fp32 model's (same model_id) only as far as ``cross_variant_with_fp32`` measured; fp32 itself has none.
    """

    name: str = Field(min_length=1)  # "fp32", "int8", "fp16", "tensorrt-fp16", "tensorrt-fp32"
    file: str | None
    runtime: Literal["onnxruntime", "tensorrt"]
    precision: Literal["fp32", "fp16", "int8"]
    device: Literal["any", "cpu", "gpu"]
    passed: bool
    gate: VariantGate = VariantGate()
    cross_variant_with_fp32: CrossVariantGate | None = None
    speed: VariantSpeed | None = None


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
    calibration: Calibration | None = None
    variants: tuple[VariantSpec, ...] = ()  # empty in a spec older than version 3

    @property
    def dim(self) -> int:
        return self.output.dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image input shape in the model's layout, without the batch axis."""
        h, w = self.input.height, self.input.width
        return (h, w, 3) if self.input.layout == "NHWC" else (3, h, w)

    def variant(self, name: str) -> VariantSpec | None:
        """The recorded variant called ``name``, or None."""
        return next((v for v in self.variants if v.name == name), None)

    def to_json(self) -> str:
        return self.model_dump_json(indent=None)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        data = json.loads(text)
        version = data.get("spec_version")
        if version not in READABLE_SPEC_VERSIONS:
            raise ValueError(
                f"model spec version {version!r} is not supported (this server reads {READABLE_SPEC_VERSIONS})"
            )
        return cls.model_validate(data)
