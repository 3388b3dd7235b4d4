"""The INT8 recipe: the rewrites that let every op quantise keep the maths, and no float island is left."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.variants import Int8Recipe, _quantisable, float_ops, quantize_int8


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the ops as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _attention_like_graph(opset: int) -> onnx.ModelProto:
    """x (N, 8, 4, 3) -> a BatchNorm on a 4-d map, a 2-group sum over a 5-d view, spatial means with and without
    keepdims: the float ops of APNet's attention blocks, in both ONNX forms of the reduction axes."""
    rng = np.random.default_rng(0)
    n, c, h, w = "N", 8, 4, 3
    consts = {
        "gamma": rng.uniform(0.5, 2, c),
        "beta": rng.normal(size=c),
        "mean": rng.normal(size=c),
        "var": rng.uniform(0.5, 2, c),
        "shape5": np.array([0, 2, c // 2, h, w]),
        "axes1": np.array([1]),
        "axes23": np.array([2, 3]),
    }
    inits = [
        numpy_helper.from_array(v.astype(np.int64 if k.startswith(("shape", "axes")) else np.float32), k)
        for k, v in consts.items()
    ]

    def reduce(op, inputs, out, axes, keepdims):
        if opset >= 18 or op == "ReduceSum":
            return helper.make_node(op, [*inputs, axes], [out], keepdims=keepdims)
        return helper.make_node(op, inputs, [out], keepdims=keepdims, axes=list(consts[axes]))

    nodes = [
        helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Reshape", ["bn", "shape5"], ["groups"]),
        reduce("ReduceSum", ["groups"], "summed", "axes1", 0),
        reduce("ReduceMean", ["summed"], "pooled", "axes23", 1),
        reduce("ReduceMean", ["bn"], "flat", "axes23", 0),
    ]
    graph = helper.make_graph(
        nodes,
        "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("opset", [17, 18])
def test_rewrites_keep_the_outputs_and_leave_no_unquantisable_op(opset):
    model = _attention_like_graph(opset)
    x = np.random.default_rng(1).normal(size=(3, 8, 4, 3)).astype(np.float32)
    expected = _session(model).run(None, {"x": x})

    rewritten = _quantisable(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(rewritten, full_check=True)
    ops = {node.op_type for node in rewritten.graph.node}
    assert not ops & {"BatchNormalization", "ReduceMean", "ReduceSum"}
    assert {"GlobalAveragePool", "Split", "Mul", "Add"} <= ops
    for got, want in zip(_session(rewritten).run(None, {"x": x}), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rewrites_leave_other_reductions_alone():
    """A mean over channels, or a BatchNorm on a 2-d feature (the BNNeck), is not rewritten."""
    c = 4
    inits = [numpy_helper.from_array(np.ones(c, np.float32), k) for k in ("g", "b", "m", "v")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    graph = helper.make_graph(
        [
            helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"]),
            helper.make_node("ReduceMean", ["img", "axes"], ["z"], keepdims=1),
        ],
        "untouched",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", c, 2, 2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    before = [n.op_type for n in model.graph.node]
    assert [n.op_type for n in _quantisable(model).graph.node] == before


@pytest.fixture(scope="module")
def crops(synth_data):
    from formats.images import load_image
    from tests.support import TINY_HEIGHT, TINY_WIDTH

    paths = sorted((synth_data / "bounding_box_test").glob("*.jpg"))[:8]
    return np.stack([load_image(str(p), TINY_HEIGHT, TINY_WIDTH) for p in paths])


@pytest.mark.slow
def test_shipped_int8_graph_has_no_float_island_and_matches_fp32(tiny_artifact, crops, tmp_path):
    src = tiny_artifact / "model.onnx"
    islands = float_ops(quantize_int8(src, tmp_path / "plain.onnx", crops, recipe=Int8Recipe(full_coverage=False)))
    assert islands.get("BatchNormalization") and islands.get("ReduceMean")  # what the rewrites are for

    dst = quantize_int8(src, tmp_path / "model.int8.onnx", crops)
    assert float_ops(dst) == {}
    graph = onnx.load(str(dst)).graph
    ops = {node.op_type for node in graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops  # saved as ONNX Runtime fuses it (optimised offline)
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) == 1  # only the input is quantised

    def run(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
            None, {"images": crops}
        )[0]

    int8, fp32 = run(dst), run(src)
    assert ((int8 * fp32).sum(1)).min() > 0.95  # unit rows: the dot product is the cosine
