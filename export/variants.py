"""Reduced-precision variants of model.onnx: INT8 for CPUs (static quantisation), fp16 for GPUs.

Both keep the fp32 model's interface: uint8 "images" in, float32 "embeddings" out, the spec in metadata.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from export.onnx_export import INPUT_NAME


class _Batches(CalibrationDataReader):
    """Feeds calibration images to ONNX Runtime's calibrator in batches; set_range serves its strided mode."""

    def __init__(self, images: np.ndarray, batch_size: int):
        self._batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self._next: Iterator[np.ndarray] = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, *, batch_size: int = 4) -> Path:
    """Static INT8 (QDQ, per-channel int8 weights, uint8 activations, MinMax) calibrated on ``calibration``.

    The BatchNorms that survive Conv fusion (the BNNeck and the attention blocks' BNs, 1-d weights) stay float.
    Measured on a briefly trained resnet18 checkpoint (100 query / 500 gallery synthetic images, AVX2 CPU
    without VNNI): this setting changed mAP by -0.0001; with 7-bit weights (reduce_range) -0.0061 and
    quantised BNs +0.0005, all at the same speed.
    """
    if len(calibration) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference + graph fusions, as the quantiser expects (the symbolic pass chokes on the
        # exporter's dynamic Reshape shapes; the batch axis is the only dynamic one and needs no symbols).
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        batch_norms = [n.name for n in onnx.load_model(str(prepared)).graph.node if n.op_type == "BatchNormalization"]
        quantize_static(
            str(prepared),
            str(dst),
            _Batches(calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=batch_norms,
            # Strided MinMax folds each batch into the ranges at once; otherwise the calibrator keeps every
            # intermediate tensor of every calibration image (~170 MB per image for a ResNet-50 at 256x128).
            extra_options={"CalibStridedMinMax": 1},
        )
    _copy_metadata(src, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations for GPUs; uint8 input and float32 output unchanged (keep_io_types)."""
    model = onnx.load_model(str(src))
    del model.graph.value_info[:]  # stale fp32 annotations confuse the converter; shapes are re-inferred
    # export.wrap.l2_normalize is fp16-safe, so every op may run in fp16.
    model = convert_float_to_float16(model, keep_io_types=True)
    graph = OnnxModel(model)
    graph.topological_sort()  # the converter appends its Cast nodes at the end
    onnx.save_model(graph.model, str(dst))
    _copy_metadata(src, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


def _copy_metadata(src: Path, dst: Path) -> None:
    props = {p.key: p.value for p in onnx.load_model(str(src), load_external_data=False).metadata_props}
    model = onnx.load_model(str(dst))
    onnx.helper.set_model_props(model, props)
    onnx.save_model(model, str(dst))


def int8_decision(map_fp32: float, map_int8: float, max_drop: float) -> tuple[bool, str]:
    """Ship model.int8.onnx only when its mAP on the synthetic split drops by at most ``max_drop``."""
    drop = map_fp32 - map_int8
    if drop <= max_drop:
        return True, f"mAP drop {drop:+.4f} <= {max_drop}: shipped"
    return False, f"mAP drop {drop:+.4f} > {max_drop}: not shipped"


def median_latency_ms(session: ort.InferenceSession, images: np.ndarray, *, runs: int = 10) -> float:
    """Median wall time of one ``session.run`` on ``images`` after a warm-up run (for the report, not a test)."""
    feed = {INPUT_NAME: images}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))
