"""TensorRT plan build and its gate against ONNX Runtime (GPU hosts only)."""

import json

import pytest

from export.artifact import REPORT_FILE, build_artifact
from export.config import ExportConfig
from export.triton_repo import parse_config
from formats.spec import ModelSpec
from tests.support import TINY_NAME


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_plan_passes_its_gate_and_is_what_triton_serves(tiny_checkpoint, tmp_path, precision):
    out = build_artifact(
        tiny_checkpoint,
        tmp_path / TINY_NAME,
        ExportConfig(int8=False, fp16=False, tensorrt=True, trt_precision=precision),
    )
    report = json.loads((out / REPORT_FILE).read_text())["tensorrt"]
    assert report["passed"] and report["precision"] == precision
    assert report["crops"]["min_cosine"] >= report["min_cosine_required"]
    config = parse_config((out / "model_repository" / TINY_NAME / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan"
    assert (out / "model_repository" / TINY_NAME / "1" / "model.plan").stat().st_size > 0
    record = ModelSpec.from_json((out / "spec.json").read_text()).variant(f"tensorrt-{precision}")
    assert (record.file, record.device, record.passed) == ("model.plan", "gpu", True)
    assert record.cross_variant_with_fp32.model_dump() == report["cross_variant"]
