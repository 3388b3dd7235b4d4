"""Hand-made detector graphs with the output layouts of real exports (for import_detector and the runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_constant_detector(path: Path, output: np.ndarray, *, input_shape=(1, 3, 64, 64), input_type="float") -> Path:
    """A graph whose one output is ``output`` whatever the image (0 * sum(image) is added so the input is used)."""
    elem = TensorProto.FLOAT if input_type == "float" else TensorProto.UINT8
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["answer", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_detector",
        [helper.make_tensor_value_info("images", elem, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [
            numpy_helper.from_array(output.astype(np.float32), "answer"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def yolo_output(rows: list[tuple[float, float, float, float, int, float]], classes: int = 3, anchors: int = 50):
    """Ultralytics' (1, 4 + classes, anchors) layout: rows of (cx, cy, w, h, class, score); other anchors empty."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    for j, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[0, :4, j] = (cx, cy, w, h)
        out[0, 4 + cls, j] = score
    return out
