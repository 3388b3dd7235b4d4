"""The exported artifact: files, ONNX interface, agreement with the training eval path, spec round trips."""

import hashlib
import json
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from export.artifact import REPORT_FILE, build_artifact
from export.config import ExportConfig
from export.parity import GateError
from export.spec import spec_from_config_pbtxt, spec_from_onnx
from export.triton_repo import parse_config
from export.wrap import ServingModel
from formats.images import decode_image, resize
from formats.spec import SPEC_KEY, ModelSpec
from tests.support import TINY_HEIGHT, TINY_NAME, TINY_THRESHOLD, TINY_WIDTH
from training.checkpoint import load_checkpoint
from training.data import eval_transform


@pytest.fixture(scope="module")
def session(tiny_artifact):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(tiny_artifact / "model.onnx"), options, providers=["CPUExecutionProvider"])


def test_artifact_holds_every_file_and_triton_serves_the_same_model(tiny_artifact):
    for name in ("model.onnx", "spec.json", REPORT_FILE, f"model_repository/{TINY_NAME}/config.pbtxt"):
        assert (tiny_artifact / name).is_file(), name
    served = tiny_artifact / "model_repository" / TINY_NAME / "1" / "model.onnx"
    assert served.read_bytes() == (tiny_artifact / "model.onnx").read_bytes()
    assert not (tiny_artifact / "model.int8.onnx").exists()  # the fixture turns INT8 off
    assert tiny_artifact.stat().st_mode & 0o055 == 0o055  # readable by a Triton container's user
    report = json.loads((tiny_artifact / REPORT_FILE).read_text())
    assert report["fp16"]["shipped"] == (tiny_artifact / "model.fp16.onnx").is_file()


def test_report_records_a_passing_gate_within_tolerance(tiny_artifact):
    report = json.loads((tiny_artifact / REPORT_FILE).read_text())
    gate, tol = report["gate"], report["gate"]["tolerances"]
    figures = [f for group in gate["fp32"].values() for f in group.values()]
    assert {b for group in gate["fp32"].values() for b in group} == {"1", "7", "16"}
    assert max(f["max_abs_diff"] for f in figures) <= tol["max_abs_diff"]
    assert min(f["min_cosine"] for f in figures) >= tol["min_cosine"]
    assert max(gate["batch_vs_single_max_abs_diff"].values()) <= tol["batch_vs_single"]
    assert max(gate["retrieval"]["delta"].values()) <= tol["retrieval_delta"]
    assert gate["images"]["query"] > 0 and gate["images"]["gallery"] > 0
    assert report["onnx"]["bytes"] == (tiny_artifact / "model.onnx").stat().st_size


def test_spec_records_each_variant_the_export_built_with_its_gate(tiny_artifact):
    """fp32 always (it passed the parity gate); fp16 (the fixture's only other variant) with its own gate and the
    cross-variant figures; every kept file carries the same spec; no INT8 record, as none was built."""
    spec = ModelSpec.from_json((tiny_artifact / "spec.json").read_text())
    report = json.loads((tiny_artifact / REPORT_FILE).read_text())
    assert [v.name for v in spec.variants] == ["fp32", "fp16"] and spec.variant("int8") is None
    fp32, fp16 = spec.variants
    assert (fp32.file, fp32.precision, fp32.device, fp32.passed) == ("model.onnx", "fp32", "any", True)
    assert fp32.cross_variant_with_fp32 is None
    assert fp32.gate.retrieval.mAP == report["gate"]["retrieval"]["onnx"]["mAP"]
    assert fp32.gate.max_abs_diff == report["gate"]["max_abs_diff"] <= report["gate"]["tolerances"]["max_abs_diff"]
    assert (fp16.precision, fp16.device, fp16.runtime) == ("fp16", "gpu", "onnxruntime")
    assert fp16.passed == report["fp16"]["shipped"] == (fp16.gate.min_cosine >= 0.999)
    assert fp16.file == ("model.fp16.onnx" if fp16.passed else None)
    cross = fp16.cross_variant_with_fp32
    assert cross.model_dump() == report["fp16"]["cross_variant"]
    worst = min(cross.queries_in_fp32_gallery.mAP, cross.fp32_queries_in_gallery.mAP)
    assert cross.mAP_drop == pytest.approx(fp32.gate.retrieval.mAP - worst)
    assert cross.passed == (cross.mAP_drop <= cross.max_mAP_drop)
    for variant in spec.variants:
        if variant.file:
            assert spec_from_onnx(tiny_artifact / variant.file) == spec


def test_onnx_interface_is_uint8_nhwc_in_float_embeddings_out_with_dynamic_batch(session):
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("images", "tensor(uint8)", ["batch", TINY_HEIGHT, TINY_WIDTH, 3])
    assert (out.name, out.type, out.shape) == ("embeddings", "tensor(float)", ["batch", 512])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, TINY_HEIGHT, TINY_WIDTH, 3), dtype=np.uint8)
    whole = session.run(None, {"images": images})[0]
    assert whole.shape == (64, 512) and whole.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    for n in (1, 3):
        part = session.run(None, {"images": images[:n]})[0]
        np.testing.assert_allclose(part, whole[:n], atol=1e-5)


def test_only_a_cast_reads_the_uint8_input(tiny_artifact):
    """TensorRT takes a uint8 network input only when a cast consumes it."""
    graph = onnx.load(str(tiny_artifact / "model.onnx"), load_external_data=False).graph
    assert [n.op_type for n in graph.node if "images" in n.input] == ["Cast"]


def _png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    return data.tobytes()


def test_onnx_matches_the_training_eval_path_on_decoded_uploads(tiny_checkpoint, session):
    """Uploads of another size go through formats.images, then through training's own eval transform."""
    model, _ = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(2)
    uploads = [_png(rng.integers(0, 256, (100 + 7 * i, 45 + 3 * i, 3), dtype=np.uint8)) for i in range(5)]
    pixels = np.stack([resize(decode_image(u), TINY_HEIGHT, TINY_WIDTH) for u in uploads])
    with torch.no_grad():
        x = eval_transform()(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        expected = F.normalize(model.embed(x) + model.embed(torch.flip(x, dims=[3])), dim=1).numpy()
    got = session.run(None, {"images": pixels})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_spec_is_built_from_the_checkpoint_and_round_trips(tiny_checkpoint, tiny_artifact, session):
    spec = ModelSpec.from_json((tiny_artifact / "spec.json").read_text())
    assert spec_from_onnx(tiny_artifact / "model.onnx") == spec
    assert spec_from_config_pbtxt(tiny_artifact / "model_repository" / TINY_NAME / "config.pbtxt") == spec
    assert ModelSpec.from_json(session.get_modelmeta().custom_metadata_map[SPEC_KEY]) == spec  # what servers read

    meta = json.loads((tiny_checkpoint / "meta.json").read_text())
    weights = hashlib.sha256((tiny_checkpoint / "model.pt").read_bytes()).hexdigest()
    assert spec.model_id.startswith("apnet-resnet18-level2-flip-") and spec.model_id.endswith(weights[:12])
    assert (spec.input.height, spec.input.width) == (meta["data"]["height"], meta["data"]["width"])
    assert list(spec.normalization.mean) == meta["data"]["mean"] and list(spec.normalization.std) == meta["data"]["std"]
    assert spec.threshold is not None and spec.threshold.model_dump() == TINY_THRESHOLD
    assert (spec.provenance.rank1, spec.provenance.mAP) == (meta["metrics"]["rank1"], meta["metrics"]["mAP"])
    assert spec.dim == 512 and spec.flip_tta and spec.output.l2_normalized


def test_triton_config_parses_into_model_config(tiny_artifact):
    config = parse_config((tiny_artifact / "model_repository" / TINY_NAME / "config.pbtxt").read_text())
    spec = ModelSpec.from_json((tiny_artifact / "spec.json").read_text())
    assert (config.name, config.backend, config.max_batch_size) == (TINY_NAME, "onnxruntime", spec.max_batch_size)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims)) == ("images", [TINY_HEIGHT, TINY_WIDTH, 3])
    assert (out.name, list(out.dims)) == ("embeddings", [512])
    batching = config.dynamic_batching
    assert batching.preferred_batch_size and max(batching.preferred_batch_size) <= spec.max_batch_size
    assert 0 < batching.max_queue_delay_microseconds <= 10_000
    assert len(config.instance_group) == 1


@pytest.mark.slow
def test_wrong_preprocessing_fails_the_gate_and_leaves_the_old_artifact(
    tiny_checkpoint, tiny_artifact, tmp_path, monkeypatch
):
    """A graph fed BGR (the classic OpenCV mistake) must not ship, and must not touch what is already there."""
    out = tmp_path / TINY_NAME
    shutil.copytree(tiny_artifact, out)
    before = (out / REPORT_FILE).read_text()
    rgb_preprocess = ServingModel.preprocess
    monkeypatch.setattr(ServingModel, "preprocess", lambda self, images: rgb_preprocess(self, images.flip(-1)))
    torch.set_num_threads(1)
    with pytest.raises(GateError) as failed:
        build_artifact(tiny_checkpoint, out, ExportConfig(int8=False, fp16=False, threads=1))
    assert any("cosine" in f for f in failed.value.failures)
    assert failed.value.report["passed"] is False
    assert (out / REPORT_FILE).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [TINY_NAME]  # no half-built folder left beside it


def test_gate_data_comes_from_the_checkpoint_else_a_synthetic_set(tiny_artifact, tiny_checkpoint, tmp_path):
    from export.artifact import _parity_root
    from training.data import read_dataset

    report = json.loads((tiny_artifact / REPORT_FILE).read_text())
    trained_on = json.loads((tiny_checkpoint / "meta.json").read_text())["train"]["data_root"]
    assert report["gate"]["data_source"] == "checkpoint" and report["gate"]["data_root"] == trained_on
    spec = ModelSpec.from_json((tiny_artifact / "spec.json").read_text())
    meta = {"train": {"data_root": str(tmp_path / "moved-away")}}
    with _parity_root(ExportConfig(), meta, spec) as (root, dataset, source):
        assert source == "synthetic"
        assert read_dataset(root, dataset).query
    assert not root.exists()  # a temporary set, gone after the export
