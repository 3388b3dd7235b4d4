"""The Embedder interface and the one place that builds an embedder from settings.

Backends: ``OnnxEmbedder`` (ONNX Runtime in-process, the embedded default) and ``TritonEmbedder`` (a Triton
Inference Server over gRPC or HTTP). The interface, its errors and checks live in embedders.protocol, which the
backends import; this module imports the backends, so the dependency runs one way: base -> backends -> protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from embedders.onnx import OnnxEmbedder
from embedders.protocol import (
    NORM_TOLERANCE,
    Embedder,
    EmbedderBadResponse,
    EmbedderDeadline,
    EmbedderError,
    EmbedderUnavailable,
    batch_slices,
    check_embeddings,
    check_images,
)
from embedders.triton import TritonEmbedder

__all__ = [
    "NORM_TOLERANCE",
    "Embedder",
    "EmbedderBadResponse",
    "EmbedderDeadline",
    "EmbedderError",
    "EmbedderUnavailable",
    "OnnxEmbedder",
    "TritonEmbedder",
    "batch_slices",
    "check_embeddings",
    "check_images",
    "create_embedder",
]


def create_embedder(
    backend: Literal["onnx", "triton"],
    *,
    artifact: Path | str | None = None,
    triton_url: str | None = None,
    model_name: str | None = None,
    protocol: Literal["grpc", "http"] = "grpc",
    variant: str | None = None,
    **options,
) -> Embedder:
    """Build (not start) an embedder from settings: "onnx" needs artifact; "triton" needs triton_url and a model
    name (defaults to the artifact folder's name, which export/ uses as the Triton model name). ``variant`` names
    the artifact's variant to serve (default: the fastest that passed its gates here, embedders.variants); Triton
    serves the one its model repository holds, and start() refuses another name. ``options`` go to the backend's
    constructor."""
    if backend == "onnx":
        if artifact is None:
            raise ValueError("the onnx backend needs artifact (a folder with model.onnx)")
        return OnnxEmbedder(artifact=Path(artifact), variant=variant, **options)
    if backend == "triton":
        if triton_url is None:
            raise ValueError("the triton backend needs triton_url")
        name = model_name or (Path(artifact).name if artifact is not None else None)
        if not name:
            raise ValueError("the triton backend needs model_name (or an artifact whose folder name is the model)")
        return TritonEmbedder(triton_url, name, protocol=protocol, variant=variant, **options)
    raise ValueError(f"unknown embedder backend {backend!r} (expected 'onnx' or 'triton')")
