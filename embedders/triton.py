"""Embedder backed by a Triton Inference Server (tritonclient async: gRPC by default, HTTP selectable).

At start() it asks Triton for readiness and for the model config, whose ``reid_spec`` parameter is the model
spec; the config's input and output must agree with it. Each call sends uint8 batches (split above the max batch
size; the parts go concurrently so Triton's dynamic batcher may merge them with other callers), under a
per-request deadline, with a bounded retry with backoff for unavailability only. After a failure of that kind
the client is rebuilt, so the embedder reconnects by itself once Triton is back.

Several Triton replicas: a Kubernetes Service balances connections, not calls, and one gRPC channel is one
connection, so one API process would pin one replica. The gRPC channel balances itself instead (its
``round_robin`` policy, one subchannel per address): give ``dns:///triton-headless.NS.svc.cluster.local:8001``
(a headless Service resolves to every replica, re-resolved as replicas come and go) or a list of addresses
``10.0.0.7:8001,10.0.0.8:8001``. Every call then goes to the next ready replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Literal

import aiohttp
import numpy as np
from tritonclient.utils import InferenceServerException

from embedders.protocol import (
    Embedder,
    EmbedderBadResponse,
    EmbedderDeadline,
    EmbedderError,
    EmbedderUnavailable,
    batch_slices,
)
from embedders.variants import FP32, SETTING, VariantRefused
from formats.spec import SPEC_KEY, ModelSpec

UNAVAILABLE_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "503"}
DEADLINE_STATUSES = {"StatusCode.DEADLINE_EXCEEDED", "504"}
# Keepalive as tritonclient's defaults, plus a short reconnect backoff so a restarted Triton is found quickly.
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A rebuilt client must dial afresh, not share the old channel's subchannel that is still backing off.
    ("grpc.use_local_subchannel_pool", 1),
    # Spread calls over every address the target resolves to (replicas behind a headless Service).
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.dns_min_time_between_resolutions_ms", 5000),
]


def grpc_target(url: str) -> str:
    """A gRPC channel target for ``url``: "host:port", a gRPC URI ("dns:///name:port", "ipv4:..."), or a comma
    list of addresses, which becomes gRPC's static list ("ipv4:a:p,b:p"; names in a list are resolved once here)."""
    addresses = [part.strip() for part in url.split(",") if part.strip()]
    if len(addresses) <= 1 or ":///" in url or url.startswith(("ipv4:", "ipv6:")):
        return url.strip()
    resolved = []
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{address!r} in the Triton URL list is not host:port")
        try:
            ip = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r} in the Triton URL list ({exc})") from None
        resolved.append(f"{ip}:{port}")
    return "ipv4:" + ",".join(resolved)


class TritonEmbedder(Embedder):
    """Embeddings from model ``model_name`` on the Triton at ``url`` ("host:port", no scheme; see grpc_target for
    several replicas).

    timeout_s is the deadline of one request to Triton (each attempt); retries is how many more attempts an
    unavailable Triton gets, backoff_s doubling between them. max_batch caps the rows of one request (default
    and upper bound: the smaller of the config's and the spec's max batch size; larger calls are split).
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        protocol: Literal["grpc", "http"] = "grpc",
        *,
        model_version: str = "",
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        max_batch: int | None = None,
        variant: str | None = None,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if protocol == "http" and "," in url:
            raise ValueError("several Triton addresses need the grpc protocol (its channel balances the calls)")
        self.url, self.model_name, self.protocol, self.model_version = url, model_name, protocol, model_version
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._client = None
        self._retired: set = set()  # clients replaced after a failure, closed a deadline later
        self.requested_max_batch = max_batch
        self.max_batch = 0  # known after start()
        self.requested_variant = variant  # Triton serves what its repository holds: another name is refused

    # -- client lifecycle -------------------------------------------------------------------------------------

    def _new_client(self):
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            return grpcclient.InferenceServerClient(grpc_target(self.url), channel_args=GRPC_CHANNEL_ARGS)
        import tritonclient.http.aio as httpclient

        return httpclient.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    def _reconnect(self, failed) -> None:
        """Replace the client that failed (once, however many calls saw it fail); close it after in-flight calls."""
        if failed is not self._client:
            return
        self._client = self._new_client()
        self._retired.add(failed)
        asyncio.get_running_loop().call_later(
            self.timeout_s, lambda: asyncio.ensure_future(self._close_retired(failed))
        )

    async def _close_retired(self, client) -> None:
        if client in self._retired:
            self._retired.discard(client)
            with contextlib.suppress(Exception):
                await client.close()

    async def start(self) -> None:
        if self._client is None:  # a start() that failed keeps its client: callers may retry start()
            self._client = self._new_client()
        config = await self._call(self._read_config)
        self.spec = spec_from_config(config, self.model_name)
        self.variant = config_variant(config, self.spec)
        if self.requested_variant and self.requested_variant != self.variant:
            raise VariantRefused(
                f"{SETTING}={self.requested_variant}: Triton model {self.model_name!r} serves variant {self.variant} "
                "(its model repository decides; export the artifact with that variant served, or unset the setting)"
            )
        limits = [int(config.get("max_batch_size") or 0), self.spec.max_batch_size, self.requested_max_batch or 0]
        self.max_batch = min(n for n in limits if n > 0)

    async def _read_config(self, client) -> dict:
        if not await client.is_server_ready():
            raise EmbedderUnavailable(f"Triton at {self.url} is not ready")
        if not await client.is_model_ready(self.model_name, self.model_version):
            raise EmbedderUnavailable(f"model {self.model_name!r} is not ready on Triton at {self.url}")
        config = await client.get_model_config(self.model_name, self.model_version, **self._as_json())
        return config.get("config", config)  # gRPC wraps the config in {"config": ...}, HTTP does not

    def _as_json(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    async def close(self) -> None:
        for client in list(self._retired):
            await self._close_retired(client)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None
        self.max_batch = 0

    async def ready(self) -> bool:
        if self._client is None or not self.max_batch:
            return False
        client = self._client
        try:
            async with asyncio.timeout(min(self.timeout_s, 1.0)):
                return bool(
                    await client.is_server_ready() and await client.is_model_ready(self.model_name, self.model_version)
                )
        except Exception:
            self._reconnect(client)
            return False

    # -- requests ---------------------------------------------------------------------------------------------

    async def _call(self, fn):
        """Run ``fn(client)`` under the deadline, retrying unavailability with backoff; map every failure."""
        for attempt in range(self.retries + 1):
            client = self._client
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await fn(client)
            except EmbedderError as e:
                error = e
            except TimeoutError:
                raise EmbedderDeadline(f"Triton at {self.url} did not answer within {self.timeout_s} s") from None
            except InferenceServerException as e:
                error = map_triton_error(e, self.url)
            except (aiohttp.ClientConnectionError, OSError) as e:
                error = EmbedderUnavailable(f"cannot reach Triton at {self.url}: {e}")
            if not isinstance(error, EmbedderUnavailable):
                raise error
            self._reconnect(client)
            if attempt < self.retries:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise error

    async def _infer(self, client, images: np.ndarray) -> np.ndarray:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as tc

            extra = {"client_timeout": self.timeout_s}  # also tells Triton the deadline
        else:
            import tritonclient.http.aio as tc

            extra = {}
        tensor = tc.InferInput(self.spec.input.name, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        outputs = [tc.InferRequestedOutput(self.spec.output.name)]
        result = await client.infer(
            self.model_name, [tensor], model_version=self.model_version, outputs=outputs, **extra
        )
        out = result.as_numpy(self.spec.output.name)
        if out is None:
            raise EmbedderBadResponse(f"Triton's response has no output {self.spec.output.name!r}")
        return out

    async def embed(self, images: np.ndarray) -> np.ndarray:
        if self._client is None or not self.max_batch:
            raise EmbedderUnavailable("embedder not started (or its start failed)")
        return await super().embed(images)

    async def _embed(self, images: np.ndarray) -> np.ndarray:
        parts = await asyncio.gather(
            *(self._call(lambda c, s=s: self._infer(c, images[s])) for s in batch_slices(len(images), self.max_batch))
        )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def statistics(self) -> dict:
        """Triton's inference statistics of this model (JSON), e.g. to see the batch sizes it ran."""
        return await self._call(
            lambda c: c.get_inference_statistics(self.model_name, self.model_version, **self._as_json())
        )


def map_triton_error(error: InferenceServerException, url: str) -> EmbedderError:
    status = str(error.status())
    message = f"Triton at {url}: {error.message()} ({status})"
    if status in UNAVAILABLE_STATUSES:
        return EmbedderUnavailable(message)
    if status in DEADLINE_STATUSES:
        return EmbedderDeadline(message)
    return EmbedderBadResponse(message)


def config_variant(config: dict, spec: ModelSpec) -> str:
    """The variant a Triton model config serves: the TensorRT plan's when its platform is tensorrt_plan, else the
    fp32 ONNX model (the only ONNX file export/ puts in the model repository)."""
    if config.get("platform") == "tensorrt_plan" or config.get("backend") == "tensorrt":
        plan = next((v.name for v in spec.variants if v.runtime == "tensorrt"), None)
        return plan or "tensorrt"
    return FP32


def spec_from_config(config: dict, model_name: str) -> ModelSpec:
    """The spec in the config's ``reid_spec`` parameter, checked against the config's own input and output."""
    text = config.get("parameters", {}).get(SPEC_KEY, {}).get("string_value")
    if not text:
        raise EmbedderBadResponse(f"model {model_name!r} has no {SPEC_KEY!r} parameter in its Triton config")
    try:
        spec = ModelSpec.from_json(text)
    except ValueError as e:
        raise EmbedderBadResponse(f"model {model_name!r}: the {SPEC_KEY!r} parameter is not a valid spec: {e}") from e
    wanted = {
        "input": (spec.input.name, "TYPE_UINT8", list(spec.input_shape)),
        "output": (spec.output.name, "TYPE_FP32", [spec.dim]),
    }
    for what, (name, dtype, dims) in wanted.items():
        tensors = {t["name"]: t for t in config.get(what, [])}
        if name not in tensors:
            raise EmbedderBadResponse(f"model {model_name!r} has no {what} {name!r} (has {sorted(tensors)})")
        tensor = tensors[name]
        actual = [int(d) for d in tensor.get("dims", [])]  # gRPC's JSON writes int64 dims as strings
        if tensor.get("data_type") != dtype or actual != dims:
            raise EmbedderBadResponse(
                f"model {model_name!r} {what} {name!r} is {tensor.get('data_type')} {actual}, the spec says {dtype} {dims}"
            )
    return spec
