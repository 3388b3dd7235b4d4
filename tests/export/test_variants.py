"""INT8 and fp16 variants of the tiny model.onnx, and the INT8 shipping rule."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.spec import spec_from_onnx
from export.variants import convert_fp16, int8_decision, quantize_int8
from tests.support import TINY_HEIGHT, TINY_WIDTH


def _run(path, images):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def images(synth_data):
    """Eight person crops as the server feeds them: INT8 ranges are calibrated on, and judged by, real inputs."""
    from formats.images import load_image

    crops = sorted((synth_data / "bounding_box_test").glob("*.jpg"))[:8]
    return np.stack([load_image(str(p), TINY_HEIGHT, TINY_WIDTH) for p in crops])


@pytest.mark.parametrize(
    ("fp32", "int8", "ship"),
    [(0.5, 0.5, True), (0.5, 0.5 - 2**-8, True), (0.5, 0.5 - 2**-6, False), (0.5, 0.5 + 2**-6, True)],
)
def test_int8_ships_only_within_the_map_drop(fp32, int8, ship):
    shipped, reason = int8_decision(fp32, int8, max_drop=2**-7)
    assert shipped is ship
    assert ("not shipped" in reason) is not ship


@pytest.mark.slow
def test_int8_model_is_quantised_keeps_the_interface_and_the_spec(tiny_artifact, images, tmp_path):
    src = tiny_artifact / "model.onnx"
    dst = quantize_int8(src, tmp_path / "model.int8.onnx", images, batch_size=4)
    ops = {node.op_type for node in onnx.load(str(dst)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert dst.stat().st_size < src.stat().st_size / 2  # int8 weights
    assert spec_from_onnx(dst) == spec_from_onnx(src)
    out = _run(dst, images)
    assert out.shape == (8, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    assert _cosines(out, _run(src, images)).min() > 0.9


def test_fp16_model_keeps_uint8_in_float32_out_and_the_spec(tiny_artifact, images, tmp_path):
    src = tiny_artifact / "model.onnx"
    dst = convert_fp16(src, tmp_path / "model.fp16.onnx")
    graph = onnx.load(str(dst)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in graph.initializer if len(t.dims) == 4]  # conv kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert spec_from_onnx(dst) == spec_from_onnx(src)
    out = _run(dst, images)
    assert out.dtype == np.float32
    assert _cosines(out, _run(src, images)).min() >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("max_drop", [-1.0, 1.0])
def test_int8_file_is_kept_only_when_the_rule_ships_it(tiny_artifact, synth_data, tmp_path, max_drop):
    """Its own gate and the cross-variant one, each against figures recomputed here from the two models."""
    from export.config import GateTolerances
    from export.parity import load_parity_data, ort_embed, ort_session, retrieval_metrics
    from export.variant_gates import INT8_FILE, int8_variant

    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes((tiny_artifact / "model.onnx").read_bytes())
    data = load_parity_data(
        synth_data, "auto", TINY_HEIGHT, TINY_WIDTH, max_query=20, max_gallery=60, calibration_images=8, seed=0
    )
    session = ort_session(onnx_path, threads=1)
    features = {"query": ort_embed(session, data.query.images), "gallery": ort_embed(session, data.gallery.images)}
    fp32 = retrieval_metrics(features["query"], features["gallery"], data)
    tol = GateTolerances(int8_max_map_drop=max_drop, cross_variant_max_map_drop=max_drop)
    report, record, fp32_speed = int8_variant(tmp_path, onnx_path, data, features, fp32, tol, threads=1)
    shipped = max_drop > 0
    assert report["shipped"] is shipped and (tmp_path / INT8_FILE).is_file() is shipped
    assert record.passed is shipped and record.file == (INT8_FILE if shipped else None) and record.device == "cpu"
    assert report["mAP_change"] == pytest.approx(report["int8"]["mAP"] - fp32["mAP"])
    assert record.gate.mAP_drop == pytest.approx(fp32["mAP"] - report["int8"]["mAP"])
    assert report["speedup"] > 0 and report["speedup_batch1"] > 0 and report["latency_ms"]["int8"] > 0
    assert record.speed.speedup_vs_fp32 == pytest.approx(fp32_speed.latency_ms / record.speed.latency_ms)

    if shipped:  # the cross-variant figures, recomputed from the kept file
        int8 = ort_session(tmp_path / INT8_FILE, threads=1)
        query, gallery = ort_embed(int8, data.query.images), ort_embed(int8, data.gallery.images)
        mixed = [
            retrieval_metrics(query, features["gallery"], data),
            retrieval_metrics(features["query"], gallery, data),
        ]
        cross = record.cross_variant_with_fp32
        assert cross.queries_in_fp32_gallery.mAP == pytest.approx(mixed[0]["mAP"])
        assert cross.fp32_queries_in_gallery.mAP == pytest.approx(mixed[1]["mAP"])
        assert cross.mAP_drop == pytest.approx(fp32["mAP"] - min(m["mAP"] for m in mixed))
    assert record.cross_variant_with_fp32.passed is (record.cross_variant_with_fp32.mAP_drop <= max_drop)
    assert record.cross_variant_with_fp32.passed is shipped  # -1 is below any drop; 1 above any


def _split(pids: list[int], cam: int):
    from export.parity import Split

    return Split(np.zeros((len(pids), 1, 1, 3), np.uint8), np.array(pids), np.full(len(pids), cam))


@pytest.mark.parametrize("swap_gallery", [False, True])
def test_tensorrt_record_measures_its_plan_against_the_fp32_gallery(swap_gallery):
    """The record from a plan's gate (its features given here, as a GPU would return them): a plan that agrees
    with fp32 shares its gallery; one whose gallery embeddings are another person's does not."""
    from export.config import GateTolerances
    from export.parity import ParityData, retrieval_metrics
    from export.variant_gates import tensorrt_variant

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    query_pids, gallery_pids = [0, 1, 2, 3], [0, 0, 1, 1, 2, 2, 3, 3]
    empty = np.zeros((0, 1, 1, 3), np.uint8)
    data = ParityData("x", empty, empty, _split(query_pids, 0), _split(gallery_pids, 1), empty)
    fp32 = {
        "query": centres[query_pids] + 0.1 * rng.normal(size=(4, 16)),
        "gallery": centres[gallery_pids] + 0.1 * rng.normal(size=(8, 16)),
    }
    plan = {name: x + 1e-3 * rng.normal(size=x.shape) for name, x in fp32.items()}
    if swap_gallery:
        plan["gallery"] = plan["gallery"][::-1].copy()  # pid 3's rows where pid 0's are
    fp32_metrics = retrieval_metrics(fp32["query"], fp32["gallery"], data)
    own = retrieval_metrics(plan["query"], plan["gallery"], data)
    figures = {"min_cosine": 0.9999, "max_abs_diff": 1e-3}
    trt_report = {
        "precision": "fp16",
        "min_cosine_required": 0.999,
        "map_delta_allowed": 0.005,
        "retrieval": {"tensorrt": own, "onnx": fp32_metrics},
        "passed": True,
        **dict.fromkeys(("crops", "random", "query", "gallery"), figures),
    }
    record = tensorrt_variant(trt_report, plan, fp32, data, fp32_metrics, GateTolerances())
    assert (record.name, record.file, record.runtime, record.device) == (
        "tensorrt-fp16",
        "model.plan",
        "tensorrt",
        "gpu",
    )
    assert record.passed and record.gate.min_cosine == 0.9999
    cross = record.cross_variant_with_fp32
    assert trt_report["cross_variant"] == cross.model_dump()
    assert cross.queries_in_fp32_gallery.mAP == pytest.approx(
        retrieval_metrics(plan["query"], fp32["gallery"], data)["mAP"]
    )
    assert cross.fp32_queries_in_gallery.mAP == pytest.approx(
        retrieval_metrics(fp32["query"], plan["gallery"], data)["mAP"]
    )
    assert cross.passed is not swap_gallery
