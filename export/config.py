"""ExportConfig: how one checkpoint becomes a serving artifact (the CLI translates its flags into this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MIN_OPSET = 17
PARITY_BATCHES = (1, 7, 16)


@dataclass(frozen=True)
class GateTolerances:
    """Pass marks of the parity gates: how close ONNX Runtime must come to the PyTorch eval path."""

    max_abs_diff: float = 1e-4  # ONNX Runtime fp32 vs PyTorch eval, per embedding element
    min_cosine: float = 0.99999
    batch_vs_single: float = 1e-5  # a batch of 16 against 16 single runs
    retrieval_delta: float = 0.001  # |rank-1 diff| and |mAP diff| on the synthetic query/gallery split
    int8_max_map_drop: float = 0.01  # model.int8.onnx ships only within this
    trt_fp16_min_cosine: float = 0.999
    trt_fp16_map_delta: float = 0.005
    trt_fp32_min_cosine: float = 0.9999
    trt_fp32_map_delta: float = 0.001


@dataclass(frozen=True)
class ExportConfig:
    name: str = ""  # Triton model name; empty: the output folder's name
    opset: int = 18
    max_batch_size: int = 64
    flip_tta: bool = True  # feature(x) + feature(flip x) inside the graph, as the APNet authors evaluate
    int8: bool = True  # model.int8.onnx for CPUs (shipped only when its mAP drop is within tolerance)
    fp16: bool = True  # model.fp16.onnx for GPUs
    tensorrt: bool = False  # model.plan (needs a CUDA GPU and the tensorrt package)
    trt_precision: Literal["fp16", "fp32"] = "fp16"
    tolerances: GateTolerances = GateTolerances()
    data_root: str | None = None  # Market-1501-layout folder for parity and calibration; None: meta, else synthetic
    # Caps on the retrieval split and the calibration set: a ResNet-50 with flip-TTA embeds ~2-5 images/s per
    # CPU core, and every image is embedded by PyTorch, ONNX Runtime and the INT8 model.
    max_query: int = 100
    max_gallery: int = 500
    calibration_images: int = 64
    threads: int = 0  # ONNX Runtime / torch threads for the gate and timings; 0: library default
    seed: int = 0

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be >= {MIN_OPSET}, got {self.opset}")
        if self.max_batch_size < max(PARITY_BATCHES):
            raise ValueError(f"max_batch_size must be >= {max(PARITY_BATCHES)} (the parity gate runs that batch)")
        if self.trt_precision not in ("fp16", "fp32"):
            raise ValueError(f"trt_precision must be fp16 or fp32, got {self.trt_precision!r}")
        if self.name:
            check_model_name(self.name)


def check_model_name(name: str) -> str:
    """A Triton model name is also a folder name: letters, digits, '_', '-', '.' (not leading)."""
    if not name or name.startswith(".") or not all(ch.isalnum() or ch in "_-." for ch in name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '-' or '.' (and not start with '.')")
    return name
