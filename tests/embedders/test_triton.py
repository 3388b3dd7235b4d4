"""TritonEmbedder against a real tritonserver (nvidia-pytriton's binary) started by LocalTriton."""

import asyncio
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from client.launch import free_port
from embedders.base import EmbedderBadResponse, EmbedderDeadline, EmbedderUnavailable
from embedders.local_triton import LocalTriton, build_local_repository, free_ports, read_config
from embedders.onnx import OnnxEmbedder
from embedders.triton import TritonEmbedder, map_triton_error
from formats.spec import ModelSpec
from tests.support import images_for, make_spec, write_toy_repository_model


async def onnx_reference(artifact, images):
    async with OnnxEmbedder(artifact / "model.onnx", intra_op_threads=1, micro_batch=False) as embedder:
        return await embedder.embed(images)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_and_onnx_runtime_give_the_same_embeddings(local_triton, tiny_artifact, protocol):
    url = local_triton.url_grpc if protocol == "grpc" else local_triton.url_http

    async def scenario():
        async with TritonEmbedder(url, local_triton.model_name, protocol, max_batch=4) as triton:
            images = images_for(triton.spec, 2 * triton.max_batch + 1, seed=3)  # split into several requests
            return triton.spec, await triton.embed(images), await onnx_reference(tiny_artifact, images)

    spec, served, reference = asyncio.run(scenario())
    assert spec == ModelSpec.from_json((tiny_artifact / "spec.json").read_text())
    assert served.shape == reference.shape == (len(reference), spec.dim)
    np.testing.assert_allclose(served, reference, atol=1e-5, rtol=0)


async def settled_statistics(embedder: TritonEmbedder, inferences: int) -> dict:
    """The model's statistics once Triton has counted ``inferences`` requests (bounded wait). Triton records a
    request when it releases it, which can be just after the response reached the caller."""
    for _ in range(100):
        stats = (await embedder.statistics())["model_stats"][0]
        if int(stats.get("inference_count", 0)) >= inferences:
            break
        await asyncio.sleep(0.05)
    return stats


def test_concurrent_requests_are_batched_by_triton_and_answered_per_caller(local_triton, tiny_artifact):
    async def scenario():
        async with TritonEmbedder(local_triton.url_grpc, local_triton.model_name) as triton:
            images = images_for(triton.spec, 16, seed=4)
            before = (await triton.statistics())["model_stats"][0]
            results = await asyncio.gather(*(triton.embed(images[i : i + 1]) for i in range(16)))
            after = await settled_statistics(triton, int(before.get("inference_count", 0)) + 16)
            return results, await onnx_reference(tiny_artifact, images), before, after

    results, reference, before, after = asyncio.run(scenario())
    for i, out in enumerate(results):
        np.testing.assert_allclose(out[0], reference[i], atol=1e-5, rtol=0)
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 16
    assert executions < 16  # the dynamic batcher ran some of the 16 one-image requests together


@pytest.mark.slow
def test_stopped_triton_fails_fast_and_the_same_embedder_recovers(tiny_artifact):
    # Its own server on fixed free ports, so stopping it leaves the session one alone and a restart comes back
    # where the embedder looks.
    triton = LocalTriton(tiny_artifact, *free_ports(3))

    async def scenario():
        embedder = TritonEmbedder(triton.url_grpc, tiny_artifact.name, timeout_s=5.0)
        with pytest.raises(EmbedderUnavailable):  # Triton not up yet: start() fails, and may be retried
            await embedder.start()
        triton.start()
        await embedder.start()
        images = images_for(embedder.spec, 2, seed=5)
        first = await embedder.embed(images)
        triton.stop()
        assert not await embedder.ready()
        with pytest.raises(EmbedderUnavailable, match="127.0.0.1"):
            async with asyncio.timeout(1.0):  # well under the 5 s deadline: refused, not timed out
                await embedder.embed(images)
        triton.start()
        assert await embedder.ready()
        again = await embedder.embed(images)
        await embedder.close()
        return first, again

    try:
        first, again = asyncio.run(scenario())
    finally:
        triton.stop()
    np.testing.assert_array_equal(first, again)


@pytest.fixture(scope="module")
def toy_triton(tmp_path_factory):
    """One Triton serving hand-made models: one whose config dim disagrees with its spec, one that returns NaN,
    and a sound one that takes at most 2 images per request."""
    artifact = tmp_path_factory.mktemp("toys")
    spec = make_spec()
    write_toy_repository_model(artifact / "model_repository", "wrong_dim", spec, out_dim=spec.dim + 1)
    write_toy_repository_model(artifact / "model_repository", "nan_out", spec, poison="nan")
    write_toy_repository_model(artifact / "model_repository", "max2", make_spec(max_batch=2))
    with LocalTriton(artifact) as triton:
        yield triton


@pytest.mark.slow
def test_batches_above_the_max_batch_size_are_split(toy_triton):
    async def scenario():
        async with TritonEmbedder(toy_triton.url_grpc, "max2") as embedder:
            out = await embedder.embed(images_for(embedder.spec, 5))  # Triton refuses any request above 2
            return embedder.max_batch, out, await settled_statistics(embedder, 5)

    max_batch, out, stats = asyncio.run(scenario())
    assert max_batch == 2 and out.shape == (5, 16)
    assert int(stats["inference_count"]) == 5


@pytest.mark.slow
def test_triton_model_whose_dim_disagrees_with_its_spec_is_refused(toy_triton):
    embedder = TritonEmbedder(toy_triton.url_grpc, "wrong_dim")
    with pytest.raises(EmbedderBadResponse, match="output 'embeddings'"):
        asyncio.run(embedder.start())


@pytest.mark.slow
def test_triton_model_returning_nan_is_refused(toy_triton):
    async def scenario():
        async with TritonEmbedder(toy_triton.url_http, "nan_out", "http") as embedder:
            await embedder.embed(images_for(embedder.spec, 3))

    with pytest.raises(EmbedderBadResponse, match="NaN"):
        asyncio.run(scenario())


def test_unknown_model_is_refused_at_start(local_triton):
    with pytest.raises(EmbedderUnavailable, match="not ready"):
        asyncio.run(TritonEmbedder(local_triton.url_grpc, "no_such_model").start())


@pytest.mark.slow
def test_launcher_reports_readiness_and_exits_cleanly_on_sigterm(tiny_artifact, tmp_path):
    log_file = tmp_path / "triton.log"
    ports = [str(p) for p in free_ports(3)]
    command = [
        sys.executable,
        "-m",
        "embedders.local_triton",
        "--artifact",
        str(tiny_artifact),
        "--log-file",
        str(log_file),
    ]
    command += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "READY" in line or "Error" in line:
                break
        assert f"grpc=127.0.0.1:{ports[1]}" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log_text = log_file.read_text()
    assert "Started GRPCInferenceService" in log_text
    assert "successfully unloaded" in log_text  # Triton drained and unloaded the model, not killed


# -- failure handling without a Triton ------------------------------------------------------------------------


class CountingEmbedder(TritonEmbedder):
    attempts = 0

    async def _read_config(self, client):
        self.attempts += 1
        return await super()._read_config(client)


def test_unreachable_triton_is_retried_a_bounded_number_of_times_then_unavailable():
    embedder = CountingEmbedder(f"127.0.0.1:{free_port()}", "m", retries=2, backoff_s=0.01)
    with pytest.raises(EmbedderUnavailable, match="127.0.0.1"):
        asyncio.run(embedder.start())
    assert embedder.attempts == 3


def test_silent_server_hits_the_deadline():
    # HTTP: the request is sent and never answered. (gRPC reports a peer that never speaks HTTP/2 as unavailable.)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections (kernel backlog), never answers
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        embedder = CountingEmbedder(url, "m", "http", timeout_s=0.3)

        async def scenario():
            try:
                await embedder.start()
            finally:
                await embedder.close()

        with pytest.raises(EmbedderDeadline, match="0.3 s"):
            asyncio.run(scenario())
    assert embedder.attempts == 1  # a deadline is not retried: the request may still be running


@pytest.mark.parametrize(
    "status, kind",
    [
        ("StatusCode.UNAVAILABLE", EmbedderUnavailable),
        ("503", EmbedderUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", EmbedderDeadline),
        ("StatusCode.INTERNAL", EmbedderBadResponse),
        ("400", EmbedderBadResponse),
    ],
)
def test_triton_errors_map_to_the_embedder_hierarchy(status, kind):
    error = map_triton_error(InferenceServerException("boom", status=status), "h:1")
    assert type(error) is kind and "boom" in str(error)


def test_local_repository_keeps_the_artifact_model_but_runs_it_on_the_python_backend(tiny_artifact, tmp_path):
    repo, names = build_local_repository(tiny_artifact, tmp_path)
    original = read_config(tiny_artifact / "model_repository" / tiny_artifact.name / "config.pbtxt")
    local = read_config(repo / names[0] / "config.pbtxt")
    assert names == [original.name] and local.backend == "python" and not local.platform
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "parameters"):
        assert getattr(local, field) == getattr(original, field), field
    assert (repo / names[0] / "1" / "model.onnx").read_bytes() == (tiny_artifact / "model.onnx").read_bytes()
