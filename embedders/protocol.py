"""The Embedder interface: uint8 crops in, L2-normalised float32 embeddings out, plus the spec it serves.

Backends (embedders.onnx, embedders.triton) import this module; embedders.base builds one from settings. Every
backend checks inputs and outputs with the helpers here, so a backend that returns the wrong shape, NaN or
unnormalised rows is refused the same way whichever it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from formats.spec import ModelSpec

NORM_TOLERANCE = 1e-3  # |‖row‖ - 1| allowed for float32 rows (fp16 models stay well inside it)


class EmbedderError(Exception):
    """An embedding could not be produced."""


class EmbedderUnavailable(EmbedderError):  # noqa: N818 (names fixed by the shared contract)
    """The backend cannot be reached or is not ready (retry later)."""


class EmbedderDeadline(EmbedderError):  # noqa: N818
    """The backend did not answer within the request deadline."""


class EmbedderBadResponse(EmbedderError):  # noqa: N818
    """The backend answered with something that breaks the model spec (shape, dtype, NaN, norm, config)."""


class Embedder(ABC):
    """``spec`` is known after ``start()``; ``embed`` takes a batch of images already resized to the spec's HxW.
    ``variant``: which of the artifact's variants (``spec.variants``) computes the embeddings, also after start()."""

    spec: ModelSpec
    variant: str = "fp32"

    @abstractmethod
    async def start(self) -> None:
        """Connect or load, read the spec, check the model; raises EmbedderError."""

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> float32 (N, D), rows of unit norm, row i for image i.

        Every backend's answer is checked here, once, against the spec it serves."""
        images = check_images(images, self.spec)
        return check_embeddings(await self._embed(images), len(images), self.spec)

    @abstractmethod
    async def _embed(self, images: np.ndarray) -> np.ndarray:
        """The backend's work on images already checked against the spec."""

    @abstractmethod
    async def ready(self) -> bool:
        """Whether embed() can succeed now (never raises)."""

    @abstractmethod
    async def close(self) -> None:
        """Release sessions, connections and background tasks."""

    async def __aenter__(self) -> Embedder:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def check_images(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Caller errors (wrong dtype or size) are ValueError, not EmbedderError: the backend is fine."""
    expected = (spec.input.height, spec.input.width, 3)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1:] != expected or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N>0, {', '.join(map(str, expected))}), got {images.shape}")
    return np.ascontiguousarray(images)


def check_embeddings(embeddings: np.ndarray, n: int, spec: ModelSpec, tolerance: float = NORM_TOLERANCE) -> np.ndarray:
    """Refuse a response that breaks the spec: shape (n, dim), float32, finite, unit L2 norm."""
    if not isinstance(embeddings, np.ndarray):
        raise EmbedderBadResponse(f"expected a numpy array, got {type(embeddings).__name__}")
    if embeddings.shape != (n, spec.dim):
        raise EmbedderBadResponse(f"expected embeddings of shape ({n}, {spec.dim}), got {embeddings.shape}")
    if embeddings.dtype != np.float32:
        raise EmbedderBadResponse(f"expected float32 embeddings, got {embeddings.dtype}")
    if not np.isfinite(embeddings).all():
        raise EmbedderBadResponse("embeddings contain NaN or infinity")
    if spec.output.l2_normalized:
        norms = np.linalg.norm(embeddings, axis=1)
        worst = float(np.max(np.abs(norms - 1.0)))
        if worst > tolerance:
            raise EmbedderBadResponse(f"embeddings are not unit norm (worst |norm - 1| = {worst:.3g})")
    return embeddings


def batch_slices(n: int, max_batch: int) -> list[slice]:
    """Consecutive slices of at most max_batch rows covering range(n)."""
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]
