"""ONNX -> TensorRT plan (FP16 or FP32) with a dynamic-batch optimisation profile, gated against ONNX Runtime.

Needs a CUDA GPU and the ``tensorrt`` package (the ``gpu`` extra). A plan is specific to the GPU model and
TensorRT version that built it: build it on (a twin of) the serving host, in the Triton container's version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.config import GateTolerances
from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from export.parity import GateError, ParityData, compare, retrieval_metrics
from formats.spec import ModelSpec

OPT_BATCH = 32
WORKSPACE_BYTES = 4 << 30


class TensorRTUnavailableError(RuntimeError):
    """--tensorrt on a host without a CUDA GPU or without the tensorrt package."""


def require_tensorrt() -> None:
    """Fail fast, before any export work, with what is missing and what to do about it."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "--tensorrt needs a CUDA GPU, and this host has none visible (torch.cuda.is_available() is False). "
            "Export without --tensorrt here (Triton then serves model.onnx), or run the export on a GPU host."
        )
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "--tensorrt needs the tensorrt Python package, which is not installed: pip install -e '.[gpu]' "
            "(its version must match the TensorRT of the Triton container that will serve the plan)"
        ) from exc
    if int(tensorrt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailableError(f"--tensorrt needs TensorRT 10 or newer, found {tensorrt.__version__}")


def build_plan(onnx_path: Path, plan_path: Path, spec: ModelSpec, precision: str) -> Path:
    """Build a serialized engine with the profile min 1 / opt 32 / max spec.max_batch_size."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode since TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # true fp32, comparable with ONNX Runtime's
    else:
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    shape = spec.input_shape
    top = spec.max_batch_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *shape), (min(OPT_BATCH, top), *shape), (top, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT messages above)")
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def load_plan(plan_path: Path) -> Any:
    """An execution context for a serialized plan (raises when this GPU or TensorRT cannot run it)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"{plan_path} could not be deserialised by this TensorRT/GPU")
    return engine.create_execution_context()


def plan_embed(context: Any, images: np.ndarray, dim: int, batch_size: int = OPT_BATCH) -> np.ndarray:
    """Run a plan on uint8 NHWC images; device buffers are torch CUDA tensors."""
    stream = torch.cuda.current_stream()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).cuda()
        result = torch.empty((len(batch), dim), dtype=torch.float32, device="cuda")
        context.set_input_shape(INPUT_NAME, tuple(batch.shape))
        context.set_tensor_address(INPUT_NAME, batch.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, result.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        out.append(result.cpu().numpy())
    return np.concatenate(out)


def gate_plan(
    plan_path: Path,
    spec: ModelSpec,
    data: ParityData,
    onnx_features: dict[str, np.ndarray],
    onnx_metrics: dict[str, float],
    precision: str,
    tol: GateTolerances,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The plan against ONNX Runtime fp32 (``onnx_features`` of crops, random, query, gallery): cosine and mAP.
    Returns (report, the plan's features of the same images), or raises GateError."""
    min_cosine, map_delta = (
        (tol.trt_fp16_min_cosine, tol.trt_fp16_map_delta)
        if precision == "fp16"
        else (tol.trt_fp32_min_cosine, tol.trt_fp32_map_delta)
    )
    context = load_plan(plan_path)
    images = {"crops": data.crops, "random": data.noise, "query": data.query.images, "gallery": data.gallery.images}
    features = {name: plan_embed(context, batch, spec.dim) for name, batch in images.items()}
    report: dict[str, Any] = {"precision": precision, "min_cosine_required": min_cosine, "map_delta_allowed": map_delta}
    failures = []
    for name in images:
        figures = compare(onnx_features[name], features[name])
        report[name] = figures
        if figures["min_cosine"] < min_cosine:
            failures.append(f"TensorRT {precision} {name}: cosine {figures['min_cosine']:.6f} < {min_cosine}")
    metrics = retrieval_metrics(features["query"], features["gallery"], data)
    delta = abs(metrics["mAP"] - onnx_metrics["mAP"])
    report["retrieval"] = {"tensorrt": metrics, "onnx": onnx_metrics, "delta_mAP": delta}
    if delta > map_delta:
        failures.append(f"TensorRT {precision} mAP differs from ONNX Runtime by {delta:.4f} > {map_delta}")
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise GateError(failures, report)
    return report, features
