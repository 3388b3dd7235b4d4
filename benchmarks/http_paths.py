"""The search request path, variant by variant and form by form, in one run: HTTP p50/p95/p99 at each concurrency
for each served variant (fp32, int8...) and each request form (multipart, raw body), beside the served model alone
(the same variant's ONNX session in this process, batch 1, no HTTP), with the server's own decode / embed / search
times (Server-Timing) to split the overhead by stage. Optionally the same searches against the server of another
source tree (``baseline``: today's code, fp32 and multipart), so that a change is measured against what it
replaces on the same machine at the same time.

Every server is started first and stays up; the measurements then go round the configurations ``rounds`` times,
a slice of the requests each time, so that a machine whose load drifts weighs on every configuration alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from client.launch import free_port, wait_http

FORMS = ("multipart", "raw")


@dataclass
class Config:
    """One server to measure: its label, the source tree it runs from, the variant it serves and its URL."""

    label: str
    variant: str
    tree: Path | None = None  # None: this tree
    forms: tuple[str, ...] = FORMS
    url: str = ""
    samples: dict[tuple[str, int], list[tuple[float, dict[str, float]]]] = field(default_factory=dict)


def media_type(image: bytes) -> str:
    if image[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return "image/webp"


def server_timing(header: str) -> dict[str, float]:
    """{"decode": ms, "embed": ms, "search": ms} from a Server-Timing header."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


async def search_once(http: httpx.AsyncClient, form: str, image: bytes) -> httpx.Response:
    if form == "raw":
        return await http.post(
            "/v1/search", content=image, params={"top_k": 10}, headers={"content-type": media_type(image)}
        )
    return await http.post("/v1/search", files={"image": ("q.jpg", image)}, data={"top_k": "10"})


async def measure_slice(
    url: str, api_key: str | None, images: list[bytes], form: str, concurrency: int, requests: int, offset: int
) -> list[tuple[float, dict[str, float]]]:
    """``requests`` searches over ``concurrency`` connections: (seconds, server timings) of each that answered 200."""
    headers = {"X-API-Key": api_key} if api_key else {}
    samples: list[tuple[float, dict[str, float]]] = []
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        for i in range(concurrency):  # warm-up: one request per connection
            (await search_once(http, form, images[i % len(images)])).raise_for_status()

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = offset + next_index
                next_index += 1
                start = time.perf_counter()
                r = await search_once(http, form, images[i % len(images)])
                elapsed = time.perf_counter() - start
                if r.status_code == 200:
                    samples.append((elapsed, server_timing(r.headers.get("server-timing", ""))))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def model_alone(artifact: Path, variant: str, images: list[bytes], n: int) -> list[float]:
    """Seconds of each of ``n`` batch-1 embeddings by the variant's own session in this process (no HTTP)."""
    from embedders.onnx import OnnxEmbedder
    from formats.images import decode_image, resize

    async def run() -> list[float]:
        async with OnnxEmbedder(artifact=artifact, variant=variant, micro_batch=False) as embedder:
            h, w = embedder.spec.input.height, embedder.spec.input.width
            crops = [resize(decode_image(b), h, w)[None] for b in images[:32]]
            await embedder.embed(crops[0])
            times = []
            for i in range(n):
                start = time.perf_counter()
                await embedder.embed(crops[i % len(crops)])
                times.append(time.perf_counter() - start)
            return times

    return asyncio.run(run())


@contextlib.contextmanager
def running(config: Config, artifact: Path, gallery: Path, extra_env: dict[str, str]) -> Iterator[str]:
    """``python -m server`` from the config's tree serving its variant on a fresh gallery; yields its URL."""
    port = free_port()
    env = {**os.environ, **extra_env, "REID_ARTIFACT": str(artifact.resolve()), "REID_GALLERY_DIR": str(gallery)}
    env |= {"REID_BACKEND": "onnx", "REID_CREATE_GALLERY": "true", "REID_MODEL_VARIANT": config.variant}
    env.pop("REID_TRITON_URL", None)
    if config.tree is not None:
        env.pop("REID_MODEL_VARIANT")  # the baseline serves fp32, the only variant it knows
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, cwd=config.tree or Path.cwd())
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", process, f"the {config.label} server", 300)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarise(config: Config, form: str, concurrency: int, model_ms: list[float], wall_s: float) -> dict:
    samples = config.samples.get((form, concurrency), [])
    ms = [s * 1000.0 for s, _ in samples]
    stage = {k: [t.get(k, 0.0) for _, t in samples] for k in ("decode", "embed", "search")}
    outside_model = [m - e for m, e in zip(ms, stage["embed"], strict=True)]
    http = [m - d - e - s for m, d, e, s in zip(ms, stage["decode"], stage["embed"], stage["search"], strict=True)]
    row = {
        "config": config.label,
        "variant": config.variant,
        "form": form,
        "concurrency": concurrency,
        "ok": len(ms),
        "p50_ms": _pct(ms, 50),
        "p95_ms": _pct(ms, 95),
        "p99_ms": _pct(ms, 99),
        "requests_per_s": round(len(ms) / wall_s, 1) if wall_s else None,
        **{f"server_{k}_p50_ms": _pct(v, 50) for k, v in stage.items()},
        "outside_model_p50_ms": _pct(outside_model, 50),  # request by request: everything but the server's embed
        "http_and_parsing_p50_ms": _pct(http, 50),  # everything outside the server's decode, embed and search
        "model_alone_p50_ms": _pct(model_ms, 50),
    }
    if row["p50_ms"] is not None and row["model_alone_p50_ms"] is not None:
        row["p50_minus_model_alone_p50_ms"] = round(row["p50_ms"] - row["model_alone_p50_ms"], 3)
    return row


def run_paths(
    artifact: Path,
    images: list[bytes],
    fill: list[bytes],
    *,
    variants: list[str],
    concurrency: list[int],
    requests: int,
    rounds: int = 4,
    baseline: Path | None = None,
    api_key: str | None = None,
    workdir: Path,
    log=print,
) -> dict:
    """Start every server, fill each gallery with ``fill``, then measure round-robin; the summary rows and ratios."""
    configs = [Config(label=variant, variant=variant) for variant in variants]
    if baseline is not None:
        configs.insert(0, Config(label="baseline", variant="fp32", tree=baseline, forms=("multipart",)))
    per_round = max(1, requests // rounds)
    model_ms: dict[str, list[float]] = {v: [] for v in {c.variant for c in configs}}
    walls: dict[tuple[str, str, int], float] = {}
    with contextlib.ExitStack() as stack:
        for i, config in enumerate(configs):
            config.url = stack.enter_context(running(config, artifact, workdir / f"gallery-{i}", {}))
            fill_gallery(config.url, api_key, fill)
            log(f"{config.label}: serving {config.url}")
        for r in range(rounds):
            for variant in model_ms:
                model_ms[variant] += [s * 1000.0 for s in model_alone(artifact, variant, images, per_round)]
            for config in configs:
                for form in config.forms:
                    for c in concurrency:
                        start = time.perf_counter()
                        got = asyncio.run(measure_slice(config.url, api_key, images, form, c, per_round, r * per_round))
                        walls[(config.label, form, c)] = (
                            walls.get((config.label, form, c), 0.0) + time.perf_counter() - start
                        )
                        config.samples.setdefault((form, c), []).extend(got)
            log(f"round {r + 1}/{rounds} done")
    rows = [
        summarise(config, form, c, model_ms[config.variant], walls[(config.label, form, c)])
        for config in configs
        for form in config.forms
        for c in concurrency
    ]
    return {"rows": rows, "ratios": ratios(rows)}


def fill_gallery(url: str, api_key: str | None, images: list[bytes]) -> None:
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        for i in range(0, len(images), 16):
            batch = images[i : i + 16]
            r = http.post(
                "/v1/gallery",
                files=[("images", (f"g{i + j}.jpg", b)) for j, b in enumerate(batch)],
                data={"person_id": [f"bench{i + j}" for j in range(len(batch))]},
            )
            r.raise_for_status()


def ratios(rows: list[dict]) -> dict:
    """End-to-end p50 of each configuration at concurrency 1 over the baseline's (fp32, multipart)."""
    by = {(r["config"], r["form"], r["concurrency"]): r for r in rows}
    base = by.get(("baseline", "multipart", 1)) or by.get(("fp32", "multipart", 1))
    if not base or not base["p50_ms"]:
        return {}
    return {
        f"{cfg}/{form}": round(r["p50_ms"] / base["p50_ms"], 3)
        for (cfg, form, c), r in by.items()
        if c == 1 and r["p50_ms"]
    }
