"""The embedder benchmark runs end to end (tiny load) and writes the figures it promises."""

import json
import shutil

import pytest

from benchmarks.embedders import main
from tests.support import make_spec, write_toy_repository_model


@pytest.mark.slow
def test_bench_writes_every_backend_and_concurrency(tmp_path):
    artifact = tmp_path / "toy"
    write_toy_repository_model(artifact / "model_repository", "toy", make_spec())
    shutil.copy(artifact / "model_repository" / "toy" / "1" / "model.onnx", artifact / "model.onnx")
    out = tmp_path / "bench.json"
    args = [
        "--artifact",
        str(artifact),
        "--out",
        str(out),
        "--requests",
        "4",
        "--rounds",
        "1",
        "--concurrency",
        "1",
        "2",
    ]
    assert main(args + ["--threads", "1"]) == 0
    report = json.loads(out.read_text())
    cells = {(r["backend"], r["concurrency"]) for r in report["results"]}
    assert cells == {(b, c) for b in ("onnx", "onnx+microbatch", "triton-grpc", "triton-http") for c in (1, 2)}
    assert all(r["requests"] == 4 and r["images_per_s"] > 0 for r in report["results"])
    assert set(report["triton_overhead_ms_c1"]) == {"grpc", "http"}
    assert {(t["intra_op_threads"], t["batch"]) for t in report["threads"]} == {(1, 1), (1, 8)}
