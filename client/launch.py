"""Start the API (and optionally a local Triton) as child processes, for `reid serve` and the benchmark.

Child processes, not imports: the client package never imports server code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, what: str, timeout_s: float) -> None:
    """Poll url until it answers 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} was not ready after {timeout_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serve(
    *,
    artifact: Path | None,
    gallery: Path | None,
    triton: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    triton_port: int = 8010,
    extra_env: dict[str, str] | None = None,
    wait_ready_s: float | None = None,
    create_gallery: bool = False,
) -> Iterator[subprocess.Popen]:
    """Run the API as ``python -m server`` (uvicorn with the deadlines and connection limits of the REID_* settings,
    after a local Triton on triton_port..+2 when ``triton``); yields the API's process. With wait_ready_s, returns
    only once /readyz answers 200. ``create_gallery``: start a new gallery where none exists (else refused)."""
    env = {**os.environ, **(extra_env or {})}
    if artifact is not None:
        env["REID_ARTIFACT"] = str(artifact)
    if gallery is not None:
        env["REID_GALLERY_DIR"] = str(gallery)
    if create_gallery:
        env["REID_CREATE_GALLERY"] = "true"
    children: list[subprocess.Popen] = []
    try:
        if triton:
            if artifact is None:
                raise ValueError("a local Triton needs the artifact whose model repository it serves")
            command = [sys.executable, "-m", "embedders.local_triton", "--artifact", str(artifact)]
            command += ["--http-port", str(triton_port), "--grpc-port", str(triton_port + 1)]
            command += ["--metrics-port", str(triton_port + 2)]
            children.append(subprocess.Popen(command))
            wait_http(f"http://127.0.0.1:{triton_port}/v2/health/ready", children[-1], "tritonserver", 300)
            env["REID_BACKEND"] = "triton"
            env["REID_TRITON_URL"] = f"127.0.0.1:{triton_port + 1}"
        else:
            env["REID_BACKEND"] = "onnx"
            env.pop("REID_TRITON_URL", None)
        command = [sys.executable, "-m", "server", "--host", host, "--port", str(port), "--log-level", "warning"]
        children.append(subprocess.Popen(command, env=env))
        if wait_ready_s is not None:
            wait_http(f"http://{host}:{port}/readyz", children[-1], "the API server", wait_ready_s)
        yield children[-1]
    finally:
        for child in reversed(children):
            _stop(child)
