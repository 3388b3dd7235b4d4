"""Embedder contract checks, the micro-batcher, and OnnxEmbedder on the tiny exported artifact."""

import asyncio

import numpy as np
import pytest

from embedders.base import (
    EmbedderBadResponse,
    EmbedderDeadline,
    EmbedderError,
    EmbedderUnavailable,
    batch_slices,
    check_embeddings,
    check_images,
    create_embedder,
)
from embedders.onnx import MicroBatcher, OnnxEmbedder
from formats.spec import ModelSpec
from tests.support import images_for, make_spec, write_toy_onnx


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- output and input checks shared by every backend -----------------------------------------------------------

SPEC = make_spec(dim=16)


def test_check_embeddings_accepts_unit_rows():
    good = unit_rows(3, 16)
    assert check_embeddings(good, 3, SPEC) is good


@pytest.mark.parametrize(
    "bad, why",
    [
        (unit_rows(3, 17), "shape"),
        (unit_rows(2, 16), "shape"),
        (unit_rows(3, 16).astype(np.float64), "float32"),
        (np.where(np.eye(3, 16, dtype=bool), np.nan, unit_rows(3, 16)).astype(np.float32), "NaN"),
        (unit_rows(3, 16) * 2, "unit norm"),
    ],
)
def test_check_embeddings_refuses_what_breaks_the_spec(bad, why):
    with pytest.raises(EmbedderBadResponse, match=why):
        check_embeddings(bad, 3, SPEC)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 4, 3), dtype=np.float32),
        np.zeros((2, 4, 8, 3), dtype=np.uint8),
        np.zeros((8, 4, 3), dtype=np.uint8),
        np.zeros((0, 8, 4, 3), dtype=np.uint8),
    ],
)
def test_check_images_refuses_wrong_dtype_or_size(bad):
    with pytest.raises(ValueError):
        check_images(bad, SPEC)


def test_batch_slices_cover_every_row_once_within_the_limit():
    slices = batch_slices(21, 8)
    assert [s.stop - s.start for s in slices] == [8, 8, 5]
    assert np.array_equal(np.concatenate([np.arange(21)[s] for s in slices]), np.arange(21))


# -- micro-batcher ---------------------------------------------------------------------------------------------


class RecordingModel:
    """A fake model: row i of the output encodes the input's first pixel, so misrouted rows are visible."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        await asyncio.sleep(0.01)  # a model call takes time, so callers arriving meanwhile queue up
        if self.fail:
            raise RuntimeError("model exploded")
        return images[:, 0, 0, :1].astype(np.float32)


def caller_images(i: int, rows: int) -> np.ndarray:
    images = np.zeros((rows, 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(rows) + 10 * i
    return images


def test_micro_batcher_shares_batches_and_routes_rows_to_their_caller():
    async def scenario():
        model = RecordingModel()
        batcher = MicroBatcher(model, max_batch=16, max_delay_s=0.05)
        rows = [1, 2, 3, 1, 2, 3, 1, 2]
        results = await asyncio.gather(*(batcher.submit(caller_images(i, r)) for i, r in enumerate(rows)))
        await batcher.close()
        return model, batcher, rows, results

    model, batcher, rows, results = asyncio.run(scenario())
    for i, (r, out) in enumerate(zip(rows, results, strict=True)):
        assert out[:, 0].tolist() == [10 * i + k for k in range(r)]
    assert sum(model.calls) == sum(rows)
    assert len(model.calls) < len(rows)  # callers shared model calls
    assert batcher.batch_sizes == model.calls


def test_micro_batcher_never_exceeds_max_batch():
    async def scenario():
        model = RecordingModel()
        batcher = MicroBatcher(model, max_batch=4, max_delay_s=0.05)
        results = await asyncio.gather(*(batcher.submit(caller_images(i, 3)) for i in range(6)))
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert max(model.calls) <= 4
    assert [out[:, 0].tolist() for out in results] == [[10 * i, 10 * i + 1, 10 * i + 2] for i in range(6)]


def test_micro_batcher_error_reaches_every_caller_of_the_batch():
    async def scenario():
        model = RecordingModel(fail=True)
        batcher = MicroBatcher(model, max_batch=16, max_delay_s=0.05)
        results = await asyncio.gather(*(batcher.submit(caller_images(i, 1)) for i in range(5)), return_exceptions=True)
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert len(model.calls) < 5
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_micro_batcher_close_fails_running_and_queued_callers():
    async def scenario():
        batcher = MicroBatcher(RecordingModel(), max_batch=1, max_delay_s=0.0)
        calls = [asyncio.ensure_future(batcher.submit(caller_images(i, 1))) for i in range(3)]
        await asyncio.sleep(0.005)  # the first batch is running, the others queue
        await batcher.close()
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, EmbedderUnavailable) for r in results)


def test_micro_batcher_keeps_working_after_a_failed_batch():
    async def scenario():
        model = RecordingModel(fail=True)
        batcher = MicroBatcher(model, max_batch=4, max_delay_s=0.0)
        with pytest.raises(RuntimeError):
            await batcher.submit(caller_images(0, 1))
        model.fail = False
        out = await batcher.submit(caller_images(7, 2))
        await batcher.close()
        return out

    assert asyncio.run(scenario())[:, 0].tolist() == [70, 71]


# -- OnnxEmbedder on the exported artifact ---------------------------------------------------------------------


def test_onnx_embedder_reads_the_spec_and_embeds(tiny_artifact):
    spec = ModelSpec.from_json((tiny_artifact / "spec.json").read_text())

    async def scenario():
        async with OnnxEmbedder(tiny_artifact / "model.onnx", intra_op_threads=1, max_batch=4) as embedder:
            assert await embedder.ready() and embedder.max_batch == 4
            n = 2 * embedder.max_batch + 1  # split into several session calls
            return embedder.spec, await embedder.embed(images_for(embedder.spec, n)), n

    served, out, n = asyncio.run(scenario())
    assert served == spec
    assert out.shape == (n, spec.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


def test_onnx_embedder_concurrent_callers_share_batches_and_get_their_own_rows(tiny_artifact):
    async def scenario():
        async with OnnxEmbedder(tiny_artifact / "model.onnx", intra_op_threads=1, micro_batch=False) as solo:
            images = images_for(solo.spec, 16, seed=1)
            expected = await solo.embed(images)
        async with OnnxEmbedder(tiny_artifact / "model.onnx", intra_op_threads=1, max_delay_ms=20) as batched:
            results = await asyncio.gather(*(batched.embed(images[i : i + 1]) for i in range(16)))
            return expected, results, batched.batch_sizes

    expected, results, batch_sizes = asyncio.run(scenario())
    for i, out in enumerate(results):
        np.testing.assert_allclose(out[0], expected[i], atol=1e-5)
    assert sum(batch_sizes) == 16
    assert max(batch_sizes) > 1


def test_onnx_embedder_splits_calls_above_the_max_batch(tmp_path):
    spec = make_spec(max_batch=2)
    path = write_toy_onnx(tmp_path / "model.onnx", spec)

    class RecordingSession:
        def __init__(self, session):
            self.session, self.rows = session, []

        def run(self, outputs, feeds):
            self.rows.append(len(next(iter(feeds.values()))))
            return self.session.run(outputs, feeds)

    async def scenario():
        async with OnnxEmbedder(path, micro_batch=False, intra_op_threads=1) as embedder:
            expected = np.concatenate([await embedder.embed(images_for(spec, 5)[i : i + 1]) for i in range(5)])
            embedder._session = recording = RecordingSession(embedder._session)
            return expected, await embedder.embed(images_for(spec, 5)), recording.rows

    expected, out, rows = asyncio.run(scenario())
    assert rows == [2, 2, 1]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_onnx_embedder_refuses_a_model_whose_dim_disagrees_with_its_spec_at_start(tmp_path):
    spec = make_spec()
    embedder = OnnxEmbedder(write_toy_onnx(tmp_path / "model.onnx", spec, out_dim=spec.dim + 1), intra_op_threads=1)

    async def scenario():
        with pytest.raises(EmbedderBadResponse, match="disagrees with the spec"):
            await embedder.start()
        return await embedder.ready()

    assert asyncio.run(scenario()) is False


@pytest.mark.parametrize("micro_batch", [True, False])
def test_onnx_embedder_inference_leaves_the_event_loop_free(tiny_artifact, micro_batch):
    async def scenario():
        async with OnnxEmbedder(tiny_artifact / "model.onnx", intra_op_threads=1, micro_batch=micro_batch) as e:
            task = asyncio.ensure_future(e.embed(images_for(e.spec, 8)))
            ticks = 0
            while not task.done():  # on the loop's thread, inference would finish before a second tick
                ticks += 1
                await asyncio.sleep(0)
            await task
            return ticks

    assert asyncio.run(scenario()) > 10


@pytest.mark.parametrize("poison, why", [("nan", "NaN"), ("unnormalized", "unit norm")])
def test_onnx_embedder_refuses_bad_outputs(tmp_path, poison, why):
    spec = make_spec()
    path = write_toy_onnx(tmp_path / "model.onnx", spec, poison=poison)

    async def scenario():
        async with OnnxEmbedder(path, intra_op_threads=1) as embedder:
            await embedder.embed(images_for(spec, 2))

    with pytest.raises(EmbedderBadResponse, match=why):
        asyncio.run(scenario())


def test_onnx_embedder_refuses_a_model_without_spec(tmp_path):
    import onnx

    path = write_toy_onnx(tmp_path / "model.onnx", make_spec())
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(EmbedderBadResponse, match="reid_spec"):
        asyncio.run(OnnxEmbedder(path).start())


def test_create_embedder_builds_each_backend_and_refuses_incomplete_settings(tiny_artifact):
    onnx_embedder = create_embedder("onnx", artifact=tiny_artifact)
    assert isinstance(onnx_embedder, OnnxEmbedder) and onnx_embedder.model_path == tiny_artifact / "model.onnx"
    triton_embedder = create_embedder("triton", artifact=tiny_artifact, triton_url="127.0.0.1:1", protocol="http")
    assert triton_embedder.model_name == tiny_artifact.name and triton_embedder.protocol == "http"
    for backend, kwargs in [
        ("onnx", {}),
        ("triton", {"model_name": "x"}),
        ("triton", {"triton_url": "h:1"}),
        ("nope", {}),
    ]:
        with pytest.raises(ValueError):
            create_embedder(backend, **kwargs)


def test_every_embedder_failure_is_an_embedder_error():
    assert all(issubclass(e, EmbedderError) for e in (EmbedderUnavailable, EmbedderDeadline, EmbedderBadResponse))


@pytest.mark.gpu
def test_onnx_embedder_runs_on_cuda_and_agrees_with_cpu(tiny_artifact):
    from embedders.onnx import default_providers

    assert default_providers()[0] == "CUDAExecutionProvider"  # the gpu extra installs onnxruntime-gpu

    async def scenario():
        async with OnnxEmbedder(tiny_artifact / "model.onnx", micro_batch=False) as gpu:
            images = images_for(gpu.spec, 8)
            on_gpu = await gpu.embed(images)
        async with OnnxEmbedder(tiny_artifact / "model.onnx", providers=["CPUExecutionProvider"]) as cpu:
            return on_gpu, await cpu.embed(images)

    on_gpu, on_cpu = asyncio.run(scenario())
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-3)  # TF32 / cuDNN kernels differ from CPU by ~1e-4
