"""Several Triton replicas behind one API: the gRPC channel spreads calls over all of them (round robin), which a
Kubernetes Service cannot do for gRPC (it balances connections, and one channel is one connection)."""

import re

import httpx
import pytest

from embedders.local_triton import LocalTriton
from embedders.triton import grpc_target
from tests.support import LiveServer, gallery_settings, person_crops

SUCCESS = re.compile(r'^nv_inference_request_success\{model="(?P<model>[^"]+)",version="1"\} (?P<n>[0-9.]+)$', re.M)


def successes(metrics_url: str, model: str) -> int:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(int(float(m["n"])) for m in SUCCESS.finditer(text) if m["model"] == model)


def test_grpc_target_forms():
    assert grpc_target("triton:8001") == "triton:8001"
    assert grpc_target("dns:///triton-headless.reid.svc.cluster.local:8001").startswith("dns:///")
    assert grpc_target("127.0.0.1:1,localhost:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="not host:port"):
        grpc_target("127.0.0.1:1,nope")


@pytest.mark.slow
def test_api_requests_spread_over_two_triton_replicas(local_triton, tiny_artifact, tmp_path):
    with LocalTriton(tiny_artifact) as second:
        replicas = [local_triton, second]
        before = [successes(r.url_metrics, r.model_name) for r in replicas]
        urls = ",".join(f"127.0.0.1:{r.grpc_port}" for r in replicas)
        settings = gallery_settings(
            tmp_path / "g", backend="triton", triton_url=urls, model_name=local_triton.model_name
        )
        crops = person_crops(24, seed=3)
        with LiveServer(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
            for crop in crops:  # one after another: each call is a separate pick by the balancer
                assert client.post("/v1/embed", files={"image": crop}).status_code == 200
        served = [successes(r.url_metrics, r.model_name) - b for r, b in zip(replicas, before, strict=True)]
    print(f"requests per replica: {served}")
    assert sum(served) >= len(crops)
    # Round robin over two ready replicas: each takes about half; pinning would leave one at zero.
    assert min(served) >= len(crops) // 4, served
