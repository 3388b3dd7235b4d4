"""Reduced-precision variants of model.onnx: INT8 for CPUs (static quantisation), fp16 for GPUs.

Both keep the fp32 model's interface: uint8 "images" in, float32 "embeddings" out, the spec in metadata.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
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


@dataclass(frozen=True)
class Int8Recipe:
    """How quantize_int8 builds the INT8 graph; the defaults are what the export ships.

    ONNX Runtime's integer GEMM on x86 is fastest with uint8 activations x int8 weights (u8 x s8; u8 x u8 and
    s8 x s8 take slower kernels), so those are the defaults. ``full_coverage`` rewrites the float ops that its
    QDQ fusions cannot turn into integer kernels (see _quantisable) so that no float island, with its
    DequantizeLinear/QuantizeLinear pair, is left between the input and the embedding head; ``optimize_offline``
    saves the graph as ONNX Runtime fuses it (QDQ -> QLinear* ops), so a server does not redo it at every start.
    ``python -m benchmarks.models --int8-steps`` measures what each setting gives.
    """

    per_channel: bool = True
    weights: Literal["s8", "u8"] = "s8"
    activations: Literal["u8", "s8"] = "u8"
    full_coverage: bool = True
    optimize_offline: bool = True


QUANT_TYPES = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}


def quantize_int8(
    src: Path, dst: Path, calibration: np.ndarray, *, batch_size: int = 4, recipe: Int8Recipe = Int8Recipe()
) -> Path:
    """Static INT8 (QDQ, MinMax ranges) calibrated on ``calibration``; ``recipe`` says which kind.

    The embedding head (the BNNeck, flip-TTA sum and L2 normalisation after the last DequantizeLinear) stays
    float: it is a few thousand values per image, and the embedding keeps its fp32 resolution. Measured on a
    briefly trained resnet18 checkpoint (100 query / 500 gallery synthetic images, AVX2 CPU without VNNI):
    8-bit per-channel weights changed mAP by -0.0001; 7-bit weights (reduce_range) by -0.0061.
    """
    if len(calibration) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference + graph fusions, as the quantiser expects (the symbolic pass chokes on the
        # exporter's dynamic Reshape shapes; the batch axis is the only dynamic one and needs no symbols).
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = onnx.load_model(str(prepared))
        if recipe.full_coverage:
            model = _quantisable(model)
            onnx.save_model(model, str(prepared))
        float_norms = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
        quantized = Path(tmp) / "quantized.onnx" if recipe.optimize_offline else dst
        quantize_static(
            str(prepared),
            str(quantized),
            _Batches(calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=False,
            activation_type=QUANT_TYPES[recipe.activations],
            weight_type=QUANT_TYPES[recipe.weights],
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_norms,
            # Strided MinMax folds each batch into the ranges at once; otherwise the calibrator keeps every
            # intermediate tensor of every calibration image (~170 MB per image for a ResNet-50 at 256x128).
            extra_options={"CalibStridedMinMax": 1},
        )
        if recipe.optimize_offline:
            optimize_for_cpu(quantized, dst)
    _copy_metadata(src, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


def optimize_for_cpu(src: Path, dst: Path) -> Path:
    """Save ``src`` as ONNX Runtime's CPU provider optimises it up to the extended level (constant folding,
    QDQ pairs fused into QLinearConv / QLinearAdd / QGemm ..., fused activations). The layout passes of the
    "all" level (NCHWc blocking, NHWC) are left to load time: they depend on the CPU's vector width."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def float_ops(path: Path | str) -> dict[str, int]:
    """Op types that compute in float inside the INT8 part of the graph as the CPU provider runs it (QDQ fusions
    applied): between the first QuantizeLinear and the last DequantizeLinear, every op that reads the output of
    a DequantizeLinear (or of such an op) is a float island, with a dequantise before it and a quantise after."""
    with tempfile.TemporaryDirectory(prefix="int8-ops-") as tmp:
        fused = optimize_for_cpu(Path(path), Path(tmp) / "fused.onnx")
        nodes = list(onnx.load_model(str(fused)).graph.node)
    ops = [n.op_type for n in nodes]
    if "QuantizeLinear" not in ops or "DequantizeLinear" not in ops:
        return {}
    first, last = ops.index("QuantizeLinear"), len(ops) - 1 - ops[::-1].index("DequantizeLinear")
    floats: set[str] = set()
    counts: dict[str, int] = {}
    for node in nodes[first:last]:
        if node.op_type == "DequantizeLinear":
            floats.update(node.output)
        elif node.op_type != "QuantizeLinear" and floats.intersection(node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            floats.update(node.output)
    return counts


def _quantisable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite the float ops that ONNX Runtime's QDQ fusions leave in float into equivalent ops they quantise.

    ONNX Runtime has integer kernels for Conv, Gemm, Add, Mul, Sigmoid, Softmax, Concat, GlobalAveragePool and
    the data-movement ops, but none for a BatchNormalization that no Conv absorbed (the attention blocks' BNs),
    ReduceMean or ReduceSum: each would stay float between a DequantizeLinear and a QuantizeLinear. Same maths:
    4-d BatchNormalization -> Mul + Add (per-channel scale and shift); ReduceMean over H, W of a 4-d tensor ->
    GlobalAveragePool (+ Flatten without keepdims); ReduceSum over a short axis of a 5-d tensor (the
    split-attention's group sum) -> Split + Add + Squeeze. Anything else, and every 2-d op (the BNNeck), stays.
    """
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.input]
    }
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        node.name = node.name or f"{node.op_type}_{index}"  # the new nodes and constants are named after it
        shape = shapes.get(node.input[0]) if node.input else None
        replacement = None
        if node.op_type == "BatchNormalization" and shape is not None and len(shape) == 4:
            replacement = _batch_norm_as_affine(node, consts, graph)
        elif node.op_type == "ReduceMean" and shape is not None and len(shape) == 4:
            replacement = _spatial_mean_as_pool(node, consts)
        elif node.op_type == "ReduceSum" and shape is not None and len(shape) == 5:
            replacement = _group_sum_as_adds(node, consts, shape, graph)
        nodes.extend(replacement or [node])
    del graph.node[:]
    graph.node.extend(nodes)
    used = _inputs_used(graph)
    kept = [t for t in graph.initializer if t.name in used]  # the replaced BatchNorms' parameters go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _inputs_used(graph: onnx.GraphProto) -> set[str]:
    """Every name a node reads, subgraphs (If, Loop, Scan bodies) included: they may read outer initializers."""
    used = set()
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                used |= _inputs_used(sub)
    return used


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _axes(node: onnx.NodeProto, consts: dict[str, np.ndarray], rank: int) -> list[int] | None:
    axes = consts.get(node.input[1]) if len(node.input) > 1 else _attribute(node, "axes", None)
    return None if axes is None else sorted(int(a) % rank for a in np.ravel(axes))


def _batch_norm_as_affine(node, consts, graph) -> list[onnx.NodeProto] | None:
    if _attribute(node, "training_mode", 0) or any(name not in consts for name in node.input[1:5]):
        return None
    gamma, beta, mean, var = (consts[name].astype(np.float64) for name in node.input[1:5])
    scale = gamma / np.sqrt(var + _attribute(node, "epsilon", 1e-5))
    shift = beta - mean * scale
    scale_name, shift_name, scaled = f"{node.name}_scale", f"{node.name}_shift", f"{node.name}_scaled"
    for name, value in ((scale_name, scale), (shift_name, shift)):
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32).reshape(1, -1, 1, 1), name))
    return [
        onnx.helper.make_node("Mul", [node.input[0], scale_name], [scaled], name=f"{node.name}_mul"),
        onnx.helper.make_node("Add", [scaled, shift_name], [node.output[0]], name=f"{node.name}_add"),
    ]


def _spatial_mean_as_pool(node, consts) -> list[onnx.NodeProto] | None:
    if _axes(node, consts, 4) != [2, 3]:
        return None
    if _attribute(node, "keepdims", 1):
        return [onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=f"{node.name}_gap")]
    pooled = f"{node.name}_pooled"
    return [
        onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=f"{node.name}_gap"),
        onnx.helper.make_node("Flatten", [pooled], [node.output[0]], name=f"{node.name}_flatten", axis=1),
    ]


def _group_sum_as_adds(node, consts, shape, graph) -> list[onnx.NodeProto] | None:
    axes = _axes(node, consts, 5)
    if axes is None or len(axes) != 1 or axes[0] == 0 or _attribute(node, "keepdims", 1):
        return None
    groups = shape[axes[0]]
    if groups is None or not 2 <= groups <= 8:
        return None
    parts = [f"{node.name}_part{k}" for k in range(groups)]
    sizes, axis_name = f"{node.name}_sizes", f"{node.name}_axis"
    graph.initializer.append(numpy_helper.from_array(np.ones(groups, dtype=np.int64), sizes))  # opset 13+ form
    graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), axis_name))
    out = [onnx.helper.make_node("Split", [node.input[0], sizes], parts, name=f"{node.name}_split", axis=axes[0])]
    total = parts[0]
    for k in range(1, groups):
        out.append(onnx.helper.make_node("Add", [total, parts[k]], [f"{node.name}_sum{k}"], name=f"{node.name}_add{k}"))
        total = f"{node.name}_sum{k}"
    out.append(onnx.helper.make_node("Squeeze", [total, axis_name], [node.output[0]], name=f"{node.name}_squeeze"))
    return out


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
