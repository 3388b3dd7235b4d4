"""python -m export: flags -> ExportConfig, and the clear refusal of --tensorrt without a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import parse_args
from export.config import ExportConfig
from tests.conftest import HAS_GPU

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_config():
    checkpoint, out, cfg = parse_args(["checkpoints/demo", "--out", "artifacts/demo"])
    assert (checkpoint, out) == (Path("checkpoints/demo"), Path("artifacts/demo"))
    assert cfg == ExportConfig()
    assert cfg.flip_tta and cfg.int8 and cfg.fp16 and not cfg.tensorrt and cfg.max_batch_size == 64


def test_flags_reach_the_config():
    _, _, cfg = parse_args(
        "ck --out a --name m1 --no-flip-tta --no-int8 --no-fp16 --tensorrt --trt-precision fp32 "
        "--max-batch-size 128 --opset 17 --data d --threads 2".split()
    )
    assert (cfg.name, cfg.flip_tta, cfg.int8, cfg.fp16, cfg.tensorrt) == ("m1", False, False, False, True)
    assert (cfg.trt_precision, cfg.max_batch_size, cfg.opset, cfg.data_root, cfg.threads) == ("fp32", 128, 17, "d", 2)


@pytest.mark.parametrize("kwargs", [{"opset": 16}, {"max_batch_size": 8}, {"name": "bad/name"}])
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        ExportConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.skipif(HAS_GPU, reason="checks the message a host without a GPU gets")
def test_tensorrt_without_gpu_fails_clearly_and_writes_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "trt"
    result = subprocess.run(
        [sys.executable, "-m", "export", str(tiny_checkpoint), "--out", str(out), "--tensorrt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "--tensorrt needs a CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_summary_names_each_variant_and_whether_it_shares_an_fp32_gallery():
    from export.cli import variants_summary

    cross = {"mAP_drop": 0.02, "max_mAP_drop": 0.01, "passed": False}
    spec = {
        "variants": [
            {"name": "fp32", "file": "model.onnx", "device": "any", "passed": True},
            {"name": "int8", "file": None, "device": "cpu", "passed": False, "cross_variant_with_fp32": cross},
        ]
    }
    lines = variants_summary(spec).splitlines()
    assert lines[1].strip() == "fp32 (model.onnx, any): passed"
    assert lines[2].strip().startswith("int8 (not kept, cpu): failed, shares an fp32 gallery: no (mAP drop +0.0200")
