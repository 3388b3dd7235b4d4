"""What several test modules share: the real app under uvicorn on 127.0.0.1 (a thread, a free port), a small
deterministic fake Embedder for the fault cases a real backend cannot show on demand, hand-made ONNX models
and Triton repositories (deliberately broken ones too), the tiny artifact's constants, and a hypothesis
strategy of mutated image bytes. Fixtures live in conftest.py; this module only defines things."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import uvicorn
from google.protobuf import text_format
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from embedders.base import Embedder, EmbedderBadResponse, EmbedderUnavailable
from formats.spec import SPEC_KEY, ModelSpec, NormalizationSpec, OutputSpec
from formats.spec import InputSpec as SpecInput
from server.main import create_app, uvicorn_config
from server.settings import Settings

# The tiny artifact of conftest.py: Triton model name, input size and the fixed threshold in its meta.json.
TINY_NAME = "tiny"
TINY_HEIGHT, TINY_WIDTH = 64, 32
TINY_THRESHOLD = {"score": 0.55, "fpr": 0.01}


# -- the API under uvicorn, and a fake embedder -----------------------------------------------------------


class LiveServer:
    """``with LiveServer(settings) as url:`` runs create_app(settings) under uvicorn until the block ends, configured
    as ``python -m server`` configures it (server.main.uvicorn_config: deadlines, connection limits)."""

    def __init__(self, settings: Settings, *, embedder: Embedder | None = None):
        self.app = create_app(settings, embedder=embedder)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn_config(settings, self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def open_work(self) -> tuple[int, int]:
        """(uvicorn's open connections, asyncio tasks on the server's loop), counted on that loop."""

        async def count() -> tuple[int, int]:
            return len(self._server.server_state.connections), len(asyncio.all_tasks()) - 1  # less this one

        loop = self._server.servers[0].get_loop()
        return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=30)

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


FAKE_SPEC = ModelSpec(
    model_id="fake-embedder-v1",
    architecture="fake",
    input={"height": 64, "width": 32},
    normalization={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
    output={"dim": 96},
    max_batch_size=4,
    threshold={"score": 0.9, "fpr": 0.01},
)


class FakeEmbedder(Embedder):
    """Embedding = the centred, L2-normalised 8x4 thumbnail: identical crops give identical vectors.

    ``fault`` makes every call fail the way a broken backend would: "unavailable", "slow", "garbage" or "bug"
    (an unexpected exception whose text must never reach the client). ``hold`` parks calls until cleared.
    """

    def __init__(self, spec: ModelSpec = FAKE_SPEC):
        self.spec = spec
        self.fault: str | None = None
        self.hold = False
        self.calls: list[int] = []

    async def start(self) -> None:
        return None

    async def _embed(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        while self.hold:
            await asyncio.sleep(0.01)
        if self.fault == "unavailable":
            raise EmbedderUnavailable("the fake backend is down")
        if self.fault == "slow":
            await asyncio.sleep(30)
        if self.fault == "garbage":
            raise EmbedderBadResponse("the fake backend returned NaN")
        if self.fault == "bug":
            raise RuntimeError('secret detail: File "/srv/app/server/x.py", line 1, Traceback')
        return fake_embedding(images)

    async def ready(self) -> bool:
        return self.fault != "unavailable"

    async def close(self) -> None:
        return None


def fake_embedding(images: np.ndarray) -> np.ndarray:
    n, h, w, _ = images.shape
    thumb = images.reshape(n, 8, h // 8, 4, w // 4, 3).mean(axis=(2, 4)).reshape(n, -1).astype(np.float32)
    thumb -= thumb.mean(axis=1, keepdims=True)
    return thumb / np.maximum(np.linalg.norm(thumb, axis=1, keepdims=True), 1e-6)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def person_crops(n: int, seed: int = 0, size: tuple[int, int] = (128, 64)) -> list[bytes]:
    """n distinct, smooth random crops as PNG bytes (distinct enough that each is its own nearest neighbour)."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (8, 4, 3)).astype(np.uint8)
        crops.append(png_bytes(np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.NEAREST))))
    return crops


def gallery_settings(gallery_dir: Path, **overrides) -> Settings:
    """Settings for a server on ``gallery_dir``, created when it does not exist yet (tests start on fresh folders)."""
    return Settings(gallery_dir=gallery_dir, _env_file=None, **{"create_gallery": True, **overrides})


# -- hand-made models -------------------------------------------------------------------------------------


def make_spec(
    *, model_id: str = "toy", height: int = 8, width: int = 4, dim: int = 16, max_batch: int = 8
) -> ModelSpec:
    return ModelSpec(
        model_id=model_id,
        architecture="toy-linear",
        input=SpecInput(height=height, width=width),
        normalization=NormalizationSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        output=OutputSpec(dim=dim),
        flip_tta=False,
        max_batch_size=max_batch,
    )


def write_toy_onnx(path: Path, spec: ModelSpec, *, out_dim: int | None = None, poison: str | None = None) -> Path:
    """A linear embedder with the contract's I/O: uint8 (N,H,W,3) -> float32 (N,out_dim), L2-normalised.

    out_dim defaults to spec.dim (set it to lie about the dim); poison="nan" makes every output NaN,
    poison="unnormalized" skips the L2 normalisation.
    """
    h, w, dim = spec.input.height, spec.input.width, out_dim or spec.dim
    weights = np.random.default_rng(0).standard_normal((h * w * 3, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["images"], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x_float", "flat_shape"], ["x_flat"]),
        helper.make_node("Div", ["x_flat", "scale"], ["x_scaled"]),
        helper.make_node("MatMul", ["x_scaled", "weights"], ["raw"]),
    ]
    last = "raw"
    if poison != "unnormalized":
        nodes.append(helper.make_node("LpNormalization", [last], ["normed"], axis=1, p=2))
        last = "normed"
    if poison == "nan":
        nodes.append(helper.make_node("Mul", [last, "nan"], ["poisoned"]))
        last = "poisoned"
    nodes.append(helper.make_node("Identity", [last], ["embeddings"]))
    initializers = [
        numpy_helper.from_array(np.array([-1, h * w * 3], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(weights, "weights"),
    ]
    if poison == "nan":
        initializers.append(numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan"))
    graph = helper.make_graph(
        nodes,
        "toy_embedder",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", h, w, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", dim])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_toy_repository_model(repo: Path, name: str, spec: ModelSpec, *, config_dim: int | None = None, **onnx_kw):
    """One model of an ONNX Runtime Triton repository, laid out like export/ writes it."""
    write_toy_onnx(repo / name / "1" / "model.onnx", spec, **onnx_kw)
    dim = config_dim or onnx_kw.get("out_dim") or spec.dim
    config = mc.ModelConfig(
        name=name,
        backend="onnxruntime",
        max_batch_size=spec.max_batch_size,
        input=[mc.ModelInput(name="images", data_type=mc.TYPE_UINT8, dims=[spec.input.height, spec.input.width, 3])],
        output=[mc.ModelOutput(name="embeddings", data_type=mc.TYPE_FP32, dims=[dim])],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=2000),
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )
    config.parameters[SPEC_KEY].string_value = spec.to_json()
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))


def images_for(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    """n random uint8 crops of the spec's input size."""
    shape = (n, spec.input.height, spec.input.width, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- image bytes with random edits --------------------------------------------------------------------------


@st.composite
def mutated(draw, seeds: list[bytes], max_edits: int = 6, max_insert: int = 16) -> bytes:
    """One of ``seeds`` with 1..max_edits byte flips, truncations or insertions."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:pos]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=max_insert))
    return bytes(data)
