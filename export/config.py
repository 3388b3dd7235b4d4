"""What the caller declares, as typed data (export.cli translates flags into it): ExportConfig (a checkpoint),
ImportConfig and Preprocessing (a network trained elsewhere and its input convention), GateTolerances (the gates'
pass marks), and ModelImportError for a declaration that cannot be served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from formats.spec import NormalizationSpec

MIN_OPSET = 17
PARITY_BATCHES = (1, 7, 16)


@dataclass(frozen=True)
class GateTolerances:
    """Pass marks of the gates: how close ONNX Runtime must come to the reference (the PyTorch eval path, or an
    imported network itself), and how far each variant may move from the fp32 model."""

    max_abs_diff: float = 1e-4  # ONNX Runtime fp32 vs PyTorch eval, per embedding element
    min_cosine: float = 0.99999
    batch_vs_single: float = 1e-5  # a batch of 16 against 16 single runs
    retrieval_delta: float = 0.001  # |rank-1 diff| and |mAP diff| on the synthetic query/gallery split
    int8_max_map_drop: float = 0.01  # model.int8.onnx ships only within this
    # A variant's queries in fp32's gallery and fp32's queries in the variant's: the larger mAP drop against fp32
    # alone, within which a gallery built by one may be searched by the other.
    cross_variant_max_map_drop: float = 0.01
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


class ModelImportError(ValueError):
    """The model or the declared preprocessing cannot make a served artifact; the message says why, in one line."""


@dataclass(frozen=True)
class ImportConfig:
    """How a network trained elsewhere becomes a serving artifact (export.import_model; the CLI fills it)."""

    name: str = ""  # Triton model name; empty: the output folder's name
    architecture: str = ""  # empty: from the model file's or factory's name
    output: str | None = None  # the embedding output; required when the network has several
    normalise: Literal["l2", "none"] = "l2"
    flip_tta: bool = False
    max_batch_size: int = 64
    opset: int = 18  # for torch networks exported here
    int8: bool = False  # needs data_root (a labelled folder: calibration and the retrieval gate)
    data_root: str | None = None
    max_query: int = 100
    max_gallery: int = 500
    calibration_images: int = 64
    threads: int = 0
    seed: int = 0
    tolerances: GateTolerances = GateTolerances()

    def __post_init__(self) -> None:
        if self.normalise not in ("l2", "none"):
            raise ModelImportError(f"--normalise must be l2 or none, not {self.normalise!r}")
        if self.max_batch_size < max(PARITY_BATCHES):
            raise ModelImportError(
                f"--max-batch-size must be >= {max(PARITY_BATCHES)} (the parity gate runs that batch)"
            )
        if self.int8 and not self.data_root:
            raise ModelImportError("--int8 needs --data (a labelled folder to calibrate on and to judge mAP on)")
        if self.name:
            try:
                check_model_name(self.name)
            except ValueError as exc:
                raise ModelImportError(str(exc)) from None


Layout = Literal["nchw", "nhwc"]
Colour = Literal["rgb", "bgr"]
Units = Literal["0-1", "0-255"]


@dataclass(frozen=True)
class Preprocessing:
    """How the network expects its input, from uint8 RGB pixels p (0..255):

        v = p in the network's channel order (colour), divided by 255 when units is "0-1"
        x = (v - mean) / std * scale, in the network's layout

    mean and std are in the network's channel order and in ``units``.
    """

    height: int | None = None
    width: int | None = None
    layout: Layout = "nchw"
    colour: Colour = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    units: Units = "0-255"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.layout not in ("nchw", "nhwc"):
            raise ModelImportError(f"--layout must be nchw or nhwc, not {self.layout!r}")
        if self.colour not in ("rgb", "bgr"):
            raise ModelImportError(f"--colour must be rgb or bgr, not {self.colour!r}")
        if self.units not in ("0-1", "0-255"):
            raise ModelImportError(f"--units must be 0-1 or 0-255, not {self.units!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelImportError("--mean and --std take 3 values (or 1 for all channels)")
        if any(s == 0 or not np.isfinite(s) for s in self.std) or not all(np.isfinite(self.mean)):
            raise ModelImportError("--std must be finite and non-zero, --mean finite")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ModelImportError("--scale must be finite and non-zero")
        if self.units == "0-1" and max(abs(m) for m in self.mean) > 1:
            raise ModelImportError(f"--mean {list(self.mean)} is outside 0-1 but --units says 0-1; is it 0-255?")
        default = self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)
        if self.units == "0-255" and not default and max(self.std) < 1 and max(abs(m) for m in self.mean) <= 1:
            raise ModelImportError(f"--mean {list(self.mean)} --std {list(self.std)} look like 0-1 units, not 0-255")

    @property
    def divisor(self) -> float:
        return 255.0 if self.units == "0-1" else 1.0

    @property
    def channel_order(self) -> list[int]:
        """Indices into RGB giving the network's channel order."""
        return [0, 1, 2] if self.colour == "rgb" else [2, 1, 0]

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per network channel with x = v_255 * a + b, v_255 the pixel in 0..255 (the graph's two ops)."""
        mean, std = np.array(self.mean, np.float64), np.array(self.std, np.float64)
        a = self.scale / (self.divisor * std)
        b = -mean * self.scale / std
        return a.astype(np.float32), b.astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """The declared preprocessing written out in numpy, as the parity gate's reference (not the folded form)."""
        v = images[..., self.channel_order].astype(np.float32) / np.float32(self.divisor)
        x = (v - np.array(self.mean, np.float32)) / np.array(self.std, np.float32) * np.float32(self.scale)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if self.layout == "nchw" else x)

    def normalization_spec(self) -> NormalizationSpec:
        """The same map as the spec states it for native models, (p/255 - mean) / std in RGB order:
        mean' = mean * d / 255 and std' = std * d / (255 * scale), d the divisor of the units."""
        back = np.argsort(self.channel_order)  # network order -> RGB order
        mean = np.array(self.mean, np.float64)[back] * self.divisor / 255.0
        std = np.array(self.std, np.float64)[back] * self.divisor / (255.0 * self.scale)
        return NormalizationSpec(in_graph=True, mean=tuple(mean.tolist()), std=tuple(std.tolist()))
