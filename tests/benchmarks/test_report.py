"""benchmarks.report: one table from the benchmarks' JSON (model rows, HTTP rows with the overhead over the
model alone) and the plots."""

import json

from PIL import Image

from benchmarks.report import main, table

MODELS = {
    "model_id": "m",
    "input": [64, 32],
    "gflop_per_image": 0.5,
    "floors_gflops": {"onnxruntime-fp32": 20.0, "onnxruntime-int8": 40.0},
    "host": {"cpu": "cpu", "isa": ["avx2"], "threads": 2, "load_average": 1.0, "date": "2026-01-01"},
    "rows": [
        {"runtime": "onnxruntime fp32", "batch": 1, "p50_ms": 9.0, "images_per_s": 111.1, "vs_fp32": 1.0},
        {"runtime": "onnxruntime int8", "batch": 16, "p50_ms": 40.0, "images_per_s": 400.0, "vs_fp32": 3.2,
         "fraction_of_floor": 0.5},
    ],
}  # fmt: skip
API = {
    "results": [
        {"backend": "onnx", "concurrency": 1, "p50_ms": 11.5, "p95_ms": 13.0, "p99_ms": 15.0, "requests_per_s": 80.0,
         "server_decode_p50_ms": 0.3, "server_embed_p50_ms": 9.5, "server_search_p50_ms": 0.2,
         "outside_embed_p50_ms": 1.8},
        {"backend": "onnx", "concurrency": 8, "p50_ms": 60.0, "p95_ms": 70.0, "p99_ms": 90.0, "requests_per_s": 120.0},
    ]
}  # fmt: skip
INDEX = {"runs": [{"factory": "Flat", "n": 10000, "p50_ms": 5.0, "recall_at_10": 1.0},
                  {"factory": "HNSW32", "n": 10000, "p50_ms": 0.5, "recall_at_10": 0.95}]}  # fmt: skip


def test_table_puts_http_beside_the_model_alone():
    text = table({"models": MODELS, "api_latency": API})
    assert "| onnxruntime int8 | batch 16 | 40.00 | - | - | 400.0 | - | 3.20 | 50% | - | - | - |" in text
    assert "| HTTP search (onnx) | c=1 | 11.50 | 13.00 | 15.00 | 80.0 | - | - | - | 9.00 | 9.50 | 1.80 |" in text
    assert "| HTTP search (onnx) | c=8 | 60.00 | 70.00 | 90.00 | 120.0 | - | - | - | 9.00 | - | - |" in text  # queueing
    assert "decode 0.30 ms, embed 9.50 ms, search 0.20 ms" in text


def test_cli_prints_the_table_and_draws_the_plots(tmp_path, capsys):
    for name, report in (("models", MODELS), ("api_latency", API), ("index", INDEX)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("| HTTP search") == 2
    for name in ("latency.png", "index.png", "runtimes.png"):
        assert f"plot: {tmp_path / name}" in out
        assert Image.open(tmp_path / name).size[0] > 300
    assert main([str(tmp_path / "empty")]) == 1
