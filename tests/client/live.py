"""Test helpers for the API: the real app under uvicorn on 127.0.0.1 (a thread, a free port), and a small
deterministic fake Embedder for the fault cases a real backend cannot be made to show on demand."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image

from server.embedder import Embedder, EmbedderBadResponse, EmbedderUnavailable
from server.main import create_app
from server.settings import Settings
from server.spec import ModelSpec


class LiveServer:
    """``with LiveServer(settings) as url:`` runs create_app(settings) under uvicorn until the block ends."""

    def __init__(self, settings: Settings, *, embedder: Embedder | None = None):
        self.app = create_app(settings, embedder=embedder)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
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

    async def embed(self, images: np.ndarray) -> np.ndarray:
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
    return Settings(gallery_dir=gallery_dir, _env_file=None, **overrides)
