"""benchmarks.http: latency per concurrency against a running server, written as JSON."""

import json

import pytest

from benchmarks.http import main
from server.settings import Settings
from tests.support import LiveServer, person_crops

ADMIN, READER = "bench-admin", "bench-read"


@pytest.fixture(scope="module")
def server_url(tiny_artifact, tmp_path_factory):
    settings = Settings(
        backend="onnx",
        artifact=tiny_artifact,
        gallery_dir=tmp_path_factory.mktemp("bench") / "gallery",
        create_gallery=True,
        admin_keys=ADMIN,
        read_keys=READER,
        _env_file=None,
    )
    with LiveServer(settings) as url:
        yield url


def test_bench_measures_a_running_server(server_url, tmp_path):
    images = tmp_path / "queries"
    images.mkdir()
    for i, data in enumerate(person_crops(4, seed=11)):
        (images / f"q{i}.png").write_bytes(data)
    out = tmp_path / "bench"
    argv = ["--url", server_url, "--api-key", READER, "--images", str(images), "--concurrency", "1,2"]
    assert main([*argv, "--requests", "6", "--out", str(out)]) == 0
    rows = json.loads((out / "api_latency.json").read_text())["results"]
    assert [(r["concurrency"], r["ok"], r["statuses"]) for r in rows] == [(1, 6, {"200": 6}), (2, 6, {"200": 6})]
    assert all(r["p50_ms"] <= r["p99_ms"] for r in rows)


def test_paths_mode_measures_each_variant_and_form_beside_the_model_alone(tiny_artifact, tmp_path):
    images = tmp_path / "queries"
    images.mkdir()
    for i, data in enumerate(person_crops(4, seed=12)):
        (images / f"q{i}.png").write_bytes(data)
    out = tmp_path / "bench"
    argv = ["--artifact", str(tiny_artifact), "--variants", "fp32", "--images", str(images), "--fill", str(images)]
    argv += ["--concurrency", "1,2", "--requests", "4", "--rounds", "2", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "api_paths.json").read_text())
    rows = {(r["config"], r["form"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {("fp32", form, c) for form in ("multipart", "raw") for c in (1, 2)}
    assert all(r["ok"] == 4 and r["model_alone_p50_ms"] > 0 and r["server_embed_p50_ms"] > 0 for r in rows.values())
    assert report["ratios"]["fp32/multipart"] == 1.0 and "fp32/raw" in report["ratios"]
