"""In-process embedder: an ONNX Runtime session behind an async micro-batcher (the embedded default backend).

The spec comes from the ONNX file's own metadata (``reid_spec``), so the file alone is enough to serve. Inference
runs in a worker thread so the event loop keeps serving; concurrent callers are grouped by ``MicroBatcher`` with
the policy of Triton's dynamic batcher (a batch closes when full or when its oldest request has waited
max_delay), so throughput under concurrency beats one session call per request.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort

from embedders.batcher import MicroBatcher
from embedders.protocol import (
    Embedder,
    EmbedderBadResponse,
    EmbedderError,
    EmbedderUnavailable,
    batch_slices,
)
from embedders.variants import FP32, SETTING, Device, VariantRefused, choose_variant
from formats.spec import SPEC_KEY, ModelSpec, VariantSpec

SPEC_FILE = "spec.json"  # beside the model files in an artifact folder (export.artifact writes it)


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu), CPU always as the fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def default_intra_op_threads() -> int:
    """Every core this process may use; pair it with spinning off (see _load_session).

    Measured with the tiny artifact (resnet18, 64x32, flip-TTA) on the 2-core shared dev host under load ~8,
    threads interleaved, median images/s at batch 1 / 8 / 32: 1 thread 26 / 29 / 31; 2 spinning threads
    12 / 20 / 25; 2 threads without spinning 22 / 29 / 30. Spinning workers steal the core from the other
    thread on a busy host; without spinning, 2 threads match 1 there and use the second core when it is free.
    """
    return max(1, len(os.sched_getaffinity(0)))


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Settings shared by OnnxEmbedder and the local Triton's model, so both run the graph the same way."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see default_intra_op_threads
    return options


def providers_device(providers: list[str]) -> Device:
    """Where a session with these providers runs its graph: the first provider decides."""
    return "gpu" if providers and providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"


def read_artifact_spec(artifact: Path) -> ModelSpec | None:
    """The spec.json of an artifact folder, or None when it has none (a bare model.onnx: served as it is)."""
    path = Path(artifact) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return ModelSpec.from_json(path.read_text())
    except ValueError as e:
        raise EmbedderBadResponse(f"{path} is not a valid spec: {e}") from e


def artifact_variant(spec: ModelSpec, requested: str | None, providers: list[str] | None = None) -> VariantSpec:
    """The variant of an artifact (its spec.json) that ONNX Runtime serves with these providers: ``requested``, or
    the fastest passed one for the device they run on (embedders.variants.choose_variant); VariantRefused if none."""
    device = providers_device(providers or default_providers())
    return choose_variant(spec, device=device, requested=requested)


class OnnxEmbedder(Embedder):
    """ONNX Runtime embedder for an exported model (spec read from the model file's metadata at start()).

    Either ``model_path`` (that file, served as it is) or ``artifact`` (a folder written by export/): then start()
    serves the variant ``variant`` names, or by default the fastest one that passed its gates for this device
    (embedders.variants), and ``variant`` says which it serves. max_batch caps the rows of one session call
    (default and upper bound: spec.max_batch_size; larger calls are split); micro_batch=False runs each call on its
    own; max_delay_ms is how long a batch of requests that queued behind a running one may wait for company.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        artifact: Path | str | None = None,
        variant: str | None = None,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        micro_batch: bool = True,
        max_batch: int | None = None,
        max_delay_ms: float = 0.5,  # as the exported Triton config (max_queue_delay_microseconds: 500)
    ) -> None:
        if (model_path is None) == (artifact is None):
            raise ValueError("give an ONNX model_path or an artifact folder, not both")
        self.artifact = Path(artifact) if artifact is not None else None
        self.model_path = (
            Path(model_path) if model_path is not None else Path(cast(Path | str, artifact)) / "model.onnx"
        )
        self.requested_variant = variant
        self.variant = FP32 if variant is None else variant  # the served one, known after start()
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.micro_batch = micro_batch
        self.requested_max_batch = max_batch
        self.max_batch = 0  # known after start()
        self.max_delay_ms = max_delay_ms
        self._session: ort.InferenceSession | None = None
        self._batcher: MicroBatcher | None = None

    def choose(self) -> ModelSpec | None:
        """Set model_path to the artifact's variant to serve (VariantRefused when the named one cannot be served
        here); the artifact's spec, or None when serving a given file or an artifact without spec.json. Reads only
        spec.json, so a server can check its settings before it starts."""
        if self.artifact is None:
            return None
        artifact_spec = read_artifact_spec(self.artifact)
        if artifact_spec is not None:
            chosen = artifact_variant(artifact_spec, self.requested_variant, self.providers)
            assert chosen.file is not None  # a servable variant's file was kept (why_not_servable)
            self.model_path = self.artifact / chosen.file
        elif self.requested_variant not in (None, FP32):
            raise VariantRefused(
                f"{SETTING}={self.requested_variant}: {self.artifact} has no {SPEC_FILE} recording variants; "
                "it serves its model.onnx (fp32)"
            )
        return artifact_spec

    async def start(self) -> None:
        artifact_spec = self.choose()
        if not self.model_path.is_file():
            raise EmbedderUnavailable(f"no ONNX model at {self.model_path}")
        session = await asyncio.to_thread(self._load_session)
        self.spec = spec_from_session(session)
        check_session_io(session, self.spec)  # a refused model is never served
        if artifact_spec is not None and artifact_spec.model_id != self.spec.model_id:
            raise EmbedderBadResponse(
                f"{self.model_path.name} holds model {self.spec.model_id}, its artifact's spec {artifact_spec.model_id}"
            )
        self.variant = served_variant(self.spec, self.model_path.name)
        self._session = session
        self.max_batch = min(self.requested_max_batch or self.spec.max_batch_size, self.spec.max_batch_size)
        if self.micro_batch:
            self._batcher = MicroBatcher(
                self._run_split,
                max_batch=self.max_batch,
                max_delay_s=self.max_delay_ms / 1000,
            )

    def _load_session(self) -> ort.InferenceSession:
        options = session_options(self.intra_op_threads)
        try:
            return ort.InferenceSession(str(self.model_path), options, providers=self.providers or default_providers())
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise EmbedderBadResponse(f"onnxruntime cannot load {self.model_path}: {e}") from e

    async def _run_split(self, images: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self._run_sync, images)

    def _run_sync(self, images: np.ndarray) -> np.ndarray:
        session, spec = self._session, self.spec
        if session is None:
            raise EmbedderUnavailable("embedder closed")
        try:
            parts = [
                session.run([spec.output.name], {spec.input.name: images[s]})[0]
                for s in batch_slices(len(images), self.max_batch)
            ]
        except Exception as e:
            raise EmbedderError(f"onnxruntime failed: {e}") from e
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def embed(self, images: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise EmbedderUnavailable("embedder not started")
        return await super().embed(images)

    async def _embed(self, images: np.ndarray) -> np.ndarray:
        if self._batcher is not None:
            return await self._batcher.submit(images)
        return await self._run_split(images)

    async def ready(self) -> bool:
        return self._session is not None

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        self._session = None

    @property
    def batch_sizes(self) -> list[int]:
        """Rows per session call made by the micro-batcher (empty without micro-batching)."""
        return self._batcher.batch_sizes if self._batcher is not None else []


def served_variant(spec: ModelSpec, file_name: str) -> str:
    """The name of the variant recorded for this file in the spec; fp32 when none is (a spec older than version 3)."""
    return next((v.name for v in spec.variants if v.file == file_name), FP32)


def spec_from_session(session: ort.InferenceSession) -> ModelSpec:
    text = session.get_modelmeta().custom_metadata_map.get(SPEC_KEY)
    if not text:
        raise EmbedderBadResponse(f"the ONNX model has no {SPEC_KEY!r} metadata; export it with `python -m export`")
    try:
        return ModelSpec.from_json(text)
    except ValueError as e:
        raise EmbedderBadResponse(f"the ONNX model's {SPEC_KEY!r} metadata is not a valid spec: {e}") from e


def check_session_io(session: ort.InferenceSession, spec: ModelSpec) -> None:
    """The graph must have the spec's input and output (names, dtypes, fixed sizes); symbolic axes pass."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    image_input, embedding_output = inputs.get(spec.input.name), outputs.get(spec.output.name)
    if image_input is None or embedding_output is None:
        raise EmbedderBadResponse(
            f"model I/O {sorted(inputs)} -> {sorted(outputs)} lacks {spec.input.name!r} -> {spec.output.name!r}"
        )
    if image_input.type != "tensor(uint8)" or embedding_output.type != "tensor(float)":
        raise EmbedderBadResponse(f"model types {image_input.type} -> {embedding_output.type}, spec uint8 -> float32")
    expected = {
        "input": (image_input.shape[1:], list(spec.input_shape)),
        "output": (embedding_output.shape[1:], [spec.dim]),
    }
    for what, (actual, wanted) in expected.items():
        if len(actual) != len(wanted) or any(
            isinstance(a, int) and a != w for a, w in zip(actual, wanted, strict=True)
        ):
            raise EmbedderBadResponse(f"model {what} shape {actual} disagrees with the spec {wanted}")
