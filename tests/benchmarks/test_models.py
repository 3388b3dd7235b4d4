"""benchmarks.models: FLOPs counted from the graph, the table's ratios and floors, a run on the tiny artifact."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.models import graph_gflop, main, markdown


def test_graph_gflop_counts_conv_and_gemm_macs_per_image(tmp_path):
    # Conv 3->8, 3x3, pad 1 on 16x8: 2*8*16*8*3*3*3 FLOPs; then Gemm (8*16*8 -> 10): 2*1024*10 FLOPs
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    g = numpy_helper.from_array(np.zeros((1024, 10), np.float32), "g")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Reshape", ["r", "shape"], ["f"]),
            helper.make_node("Gemm", ["f", "g"], ["y"]),
        ],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [w, g, shape],
    )
    path = tmp_path / "toy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    assert graph_gflop(path) == pytest.approx((2 * 8 * 16 * 8 * 27 + 2 * 1024 * 10) / 1e9)


def test_markdown_shows_ratios_and_fraction_of_floor():
    report = {
        "gflop_per_image": 0.5,
        "floors_gflops": {"onnxruntime-fp32": 20.0},
        "rows": [
            {"runtime": "onnxruntime fp32", "batch": 1, "p50_ms": 50.0, "images_per_s": 20.0, "vs_fp32": 1.0,
             "floor_images_per_s": 40.0, "fraction_of_floor": 0.5},
            {"runtime": "onnxruntime int8", "batch": 1, "p50_ms": 20.0, "images_per_s": 50.0, "vs_fp32": 2.5},
        ],
    }  # fmt: skip
    text = markdown(report)
    assert "| onnxruntime fp32 | 1 | 50.00 | 20.0 | - | x1.00 | 40.0 | 50% |" in text
    assert "| onnxruntime int8 | 1 | 20.00 | 50.0 | - | x2.50 | - | - |" in text


@pytest.mark.slow
def test_bench_on_the_tiny_artifact_has_every_row_and_ratio(tiny_artifact, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "models.json"
    args = ["--artifact", str(tiny_artifact), "--checkpoint", str(tiny_checkpoint), "--rounds", "1"]
    assert main([*args, "--threads", "1", "--batches", "1", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["runtime"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(rt, b) for rt in ("pytorch eager fp32", "onnxruntime fp32") for b in (1, 2)}  # no INT8 file
    for row in rows.values():
        assert row["vs_eager"] > 0 and row["vs_fp32"] > 0 and 0 < row["fraction_of_floor"]
        assert row["min_cosine_vs_fp32"] > 0.9999  # eager and ONNX Runtime embed alike
    assert rows[("onnxruntime fp32", 1)]["vs_fp32"] == 1.0 and rows[("pytorch eager fp32", 2)]["vs_eager"] == 1.0
    assert report["gflop_per_image"] > 0 and set(report["floors_gflops"]) == {
        "onnxruntime-fp32",
        "onnxruntime-int8",
        "torch-fp32",
    }
    assert "| pytorch eager fp32 | 2 |" in capsys.readouterr().out
