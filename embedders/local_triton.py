"""A local Triton Inference Server: the real ``tritonserver`` binary shipped in the nvidia-pytriton wheel.

It hosts an artifact's Triton model repository on 127.0.0.1 under the same model names, inputs, outputs,
dynamic batching and ``reid_spec`` parameter, so a TritonEmbedder cannot tell it from the production container.

The wheel ships only Triton's Python backend (no onnxruntime backend), so each model's config is rewritten to
``backend: "python"`` and served by ``TritonPythonModel`` below, which runs the artifact's model.onnx with
ONNX Runtime and concatenates the requests of a dynamic batch into one session call.

    python -m embedders.local_triton --artifact artifacts/demo [--http-port 8000 --grpc-port 8001 --metrics-port 8002]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
# The Python backend imports this file from each model version folder; it only re-exports the class below.
MODEL_PY = "from embedders.local_triton import TritonPythonModel  # noqa: F401\n"


class LocalTritonError(RuntimeError):
    """The local Triton could not be prepared, did not become ready, or died."""


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS has free now (all held open together, so no two are the same)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tritonserver_dist() -> Path:
    """The tritonserver folder inside the installed pytriton package (found without importing pytriton)."""
    found = importlib.util.find_spec("pytriton")
    if found is None or not found.submodule_search_locations:
        raise LocalTritonError("nvidia-pytriton is not installed; it ships the tritonserver binary")
    dist = Path(next(iter(found.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise LocalTritonError(f"no tritonserver binary under {dist}")
    return dist


def triton_env(dist: Path) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stub.

    The stub links libpython3.11; the running interpreter's LIBDIR must come first on LD_LIBRARY_PATH or the
    system libpython is loaded and model loading fails ("'_thread.RLock' object has no attribute
    '_recursion_count'"). The interpreter's bin folder goes first on PATH so the embedded Python finds this
    virtual environment (its site-packages, hence numpy, onnxruntime and this project).
    """
    env = os.environ.copy()
    libs = [sysconfig.get_config_var("LIBDIR"), str(dist.parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def prepare_backends(dist: Path, workdir: Path) -> Path:
    """A backend folder holding the Python backend and the stub built for this interpreter's version."""
    backends = workdir / "backends"
    shutil.copytree(dist / "backends", backends)
    stub = dist / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(stub / "triton_python_backend_stub", backends / "python" / "triton_python_backend_stub")
    return backends


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def python_backend_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """The same model (name, I/O, batching, parameters) served by the Python backend on CPU instances."""
    local = mc.ModelConfig()
    local.CopyFrom(config)
    local.ClearField("platform")
    local.ClearField("default_model_filename")
    local.ClearField("optimization")  # execution accelerators belong to the onnxruntime backend
    local.backend = "python"
    del local.instance_group[:]
    local.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
    return local


def build_local_repository(artifact: Path, workdir: Path) -> tuple[Path, list[str]]:
    """Rewrite artifact/model_repository for the Python backend; returns (repository, model names)."""
    source = Path(artifact) / "model_repository"
    configs = sorted(source.glob("*/config.pbtxt"))
    if not configs:
        raise LocalTritonError(f"{source} holds no <model>/config.pbtxt")
    repo, names = workdir / "model_repository", []
    for config_path in configs:
        config = read_config(config_path)
        name = config.name or config_path.parent.name
        versions = sorted(p for p in config_path.parent.iterdir() if p.is_dir() and (p / MODEL_FILE).is_file())
        if not versions:
            raise LocalTritonError(f"{config_path.parent} has no <version>/{MODEL_FILE} (needed by the local Triton)")
        for version in versions:
            target = repo / name / version.name
            target.mkdir(parents=True)
            (target / MODEL_FILE).symlink_to(version.resolve() / MODEL_FILE)
            (target / "model.py").write_text(MODEL_PY)
        (repo / name / "config.pbtxt").write_text(text_format.MessageToString(python_backend_config(config)))
        names.append(name)
    return repo, names


def _die_with_parent() -> None:
    # Linux: tritonserver gets SIGTERM if the process that started it dies, so no test run leaks a server.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalTriton:
    """Start, probe and stop a tritonserver hosting an artifact. Ports left as None are picked free at start().

    Context manager: ``with LocalTriton(artifact) as triton: TritonEmbedder(triton.url_grpc, triton.model_name)``.
    stop() then start() again reuses the same ports (a restarted server, as after a crash).
    """

    def __init__(
        self,
        artifact: Path | str,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        *,
        log_file: Path | str | None = None,
        startup_timeout_s: float = 90.0,
        exit_timeout_s: int = 10,
    ) -> None:
        self.artifact = Path(artifact)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_file = Path(log_file) if log_file else None
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.model_names: list[str] = []
        self._workdir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log_handle: io.BufferedWriter | None = None

    @property
    def url_grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url_http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url_metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def model_name(self) -> str:
        """The hosted model (the artifact's folder name for an exported artifact)."""
        if len(self.model_names) != 1:
            raise LocalTritonError(f"{len(self.model_names)} models hosted; pick one of {self.model_names}")
        return self.model_names[0]

    def start(self) -> LocalTriton:
        if self._process is not None:
            raise LocalTritonError("already started")
        dist = tritonserver_dist()
        self._workdir = Path(tempfile.mkdtemp(prefix="local-triton-"))
        try:
            repo, self.model_names = build_local_repository(self.artifact, self._workdir)
            backends = prepare_backends(dist, self._workdir)
            spare = iter(free_ports(3))
            self.http_port = self.http_port or next(spare)
            self.grpc_port = self.grpc_port or next(spare)
            self.metrics_port = self.metrics_port or next(spare)
            log_file = self.log_file or self._workdir / "tritonserver.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(log_file, "ab")  # closed in stop()
            command = [
                str(dist / "bin" / "tritonserver"),
                f"--model-repository={repo}",
                f"--backend-directory={backends}",
                f"--cache-directory={dist / 'caches'}",
                "--http-address=127.0.0.1",
                f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1",
                f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1",
                f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false",
                "--strict-readiness=true",
                "--exit-on-error=true",
                f"--exit-timeout-secs={self.exit_timeout_s}",
                "--log-verbose=0",
            ]
            log.info("starting tritonserver: %s (log: %s)", " ".join(command), log_file)
            self._process = subprocess.Popen(
                command,
                env=triton_env(dist),
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            self._wait_ready(log_file)
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver ready: grpc %s, http %s, models %s", self.url_grpc, self.url_http, self.model_names)
        return self

    def _wait_ready(self, log_file: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._process is not None  # started just before
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-3000:]
                raise LocalTritonError(f"tritonserver exited with {self._process.returncode}:\n{tail}")
            if self.ready():
                return
            time.sleep(0.1)
        raise LocalTritonError(f"tritonserver not ready after {self.startup_timeout_s} s; see {log_file}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ready(self) -> bool:
        """The process runs and Triton's /v2/health/ready says every model is ready."""
        if not self.alive():
            return False
        try:
            with urllib.request.urlopen(f"http://{self.url_http}/v2/health/ready", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL after exit_timeout_s + 5 s."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=self.exit_timeout_s + 5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TritonPythonModel:
    """Triton Python-backend model running the version folder's model.onnx with ONNX Runtime.

    Runs inside Triton's stub process, never in the API. One execute() receives every request of a dynamic
    batch; they are concatenated into one session call and the rows handed back in order.
    """

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        from embedders.onnx import default_providers, session_options

        config = json.loads(args["model_config"])
        self._input = config["input"][0]["name"]
        self._output = config["output"][0]["name"]
        model_path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILE
        self._session = ort.InferenceSession(str(model_path), session_options(), providers=default_providers())

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, self._input).as_numpy() for r in requests]
            batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            out = self._session.run([self._output], {self._input: batch})[0]
        except Exception as e:  # every request of the batch gets the error, none is dropped
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {e}")) for _ in requests]
        bounds = np.cumsum([len(a) for a in arrays])[:-1]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self._output, part)])
            for part in np.split(out, bounds)
        ]


def serve_until_stopped(triton: LocalTriton, stopping: list[int], log_file: Path, poll_s: float = 0.2) -> int:
    """Hold a started Triton until ``stopping`` gets an entry (a signal handler appends to it): 0, or 1 when
    tritonserver dies first (its log is ``log_file``)."""
    log.info("READY grpc=%s http=%s models=%s", triton.url_grpc, triton.url_http, ",".join(triton.model_names))
    while not stopping:
        time.sleep(poll_s)
        if not triton.alive():
            log.error("tritonserver died; see %s", log_file)
            return 1
    log.info("stopping tritonserver (signal %d)", stopping[0])
    return 0


if __name__ == "__main__":
    from embedders.cli import local_triton_main

    sys.exit(local_triton_main())
