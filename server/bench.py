"""Embedder throughput and latency: ONNX Runtime in-process (with and without micro-batching) vs a local Triton.

    python -m server.bench --artifact artifacts/demo [--out bench/embedders.json] [--requests 128]

Each request is one crop (what a search sends). For every backend and concurrency (1, 8, 32 callers sharing one
embedder) it reports images/s and the median / p95 request latency; then the per-request overhead of the Triton
hop (median latency at concurrency 1, Triton minus in-process ONNX Runtime without micro-batching) and, to choose
OnnxEmbedder's intra-op threads, images/s for each thread count at batch 1 and at the model's max batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.embedder import Embedder
from server.onnx_embedder import OnnxEmbedder
from server.triton import LocalTriton
from server.triton_embedder import TritonEmbedder


def random_images(embedder: Embedder, n: int, seed: int = 0) -> np.ndarray:
    spec = embedder.spec
    return np.random.default_rng(seed).integers(0, 256, (n, spec.input.height, spec.input.width, 3), dtype=np.uint8)


async def load(embedder: Embedder, *, concurrency: int, requests: int, batch: int = 1) -> dict:
    """``requests`` calls of ``batch`` images each, from ``concurrency`` callers at once."""
    pool = random_images(embedder, 64)
    await embedder.embed(pool[:batch])  # warm-up: first-call allocations stay out of the figures
    latencies: list[float] = []
    remaining = requests

    async def caller(worker: int) -> None:
        nonlocal remaining
        i = worker
        while remaining > 0:
            remaining -= 1
            images = pool[(i * batch) % (len(pool) - batch + 1) :][:batch]
            start = time.perf_counter()
            await embedder.embed(images)
            latencies.append(time.perf_counter() - start)
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(caller(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "batch": batch,
        "requests": len(latencies),
        "images_per_s": round(len(latencies) * batch / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3),
    }


async def bench_backend(name: str, make: Callable[[], Embedder], concurrencies: list[int], requests: int) -> list[dict]:
    rows = []
    for concurrency in concurrencies:
        async with make() as embedder:
            row = {"backend": name, **await load(embedder, concurrency=concurrency, requests=requests)}
        log(f"{name:<22} c={concurrency:<3} {row['images_per_s']:>9.1f} img/s  p50 {row['p50_ms']:.2f} ms")
        rows.append(row)
    return rows


async def bench_threads(model: Path, thread_counts: list[int], requests: int) -> list[dict]:
    rows = []
    for threads in thread_counts:
        async with OnnxEmbedder(model, intra_op_threads=threads, micro_batch=False) as embedder:
            for batch in (1, embedder.spec.max_batch_size):
                row = await load(embedder, concurrency=1, requests=max(8, requests // batch), batch=batch)
                rows.append({"intra_op_threads": threads, **row})
                log(f"onnx threads={threads:<2} batch={batch:<3} {row['images_per_s']:>9.1f} img/s")
    return rows


async def run(artifact: Path, concurrencies: list[int], requests: int, thread_counts: list[int]) -> dict:
    model = artifact / "model.onnx"
    results = []
    results += await bench_backend("onnx", lambda: OnnxEmbedder(model, micro_batch=False), concurrencies, requests)
    results += await bench_backend("onnx+microbatch", lambda: OnnxEmbedder(model), concurrencies, requests)
    with LocalTriton(artifact) as triton:
        for protocol, url in (("grpc", triton.url_grpc), ("http", triton.url_http)):
            results += await bench_backend(
                f"triton-{protocol}",
                lambda url=url, protocol=protocol: TritonEmbedder(url, triton.model_name, protocol),
                concurrencies,
                requests,
            )
    threads = await bench_threads(model, thread_counts, requests)
    p50 = {r["backend"]: r["p50_ms"] for r in results if r["concurrency"] == 1}
    return {
        "artifact": str(artifact),
        "host": {
            "cpus": len(os.sched_getaffinity(0)),
            "load_average": [round(x, 2) for x in os.getloadavg()],  # other work on the host skews every figure
            "machine": platform.machine(),
            "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers(),
        },
        "results": results,
        "triton_overhead_ms_c1": {
            protocol: round(p50[f"triton-{protocol}"] - p50["onnx"], 3) for protocol in ("grpc", "http")
        },
        "threads": threads,
    }


def markdown(report: dict) -> str:
    concurrencies = sorted({r["concurrency"] for r in report["results"]})
    lines = [
        "| backend | " + " | ".join(f"c={c} img/s (p50 ms)" for c in concurrencies) + " |",
        "|---|" + "---|" * len(concurrencies),
    ]
    for backend in dict.fromkeys(r["backend"] for r in report["results"]):
        cells = {r["concurrency"]: r for r in report["results"] if r["backend"] == backend}
        lines.append(
            f"| {backend} | "
            + " | ".join(f"{cells[c]['images_per_s']:.1f} ({cells[c]['p50_ms']:.2f})" for c in concurrencies)
            + " |"
        )
    overhead = report["triton_overhead_ms_c1"]
    lines.append(
        f"\nTriton hop overhead at c=1 (median): gRPC {overhead['grpc']:+.2f} ms, HTTP {overhead['http']:+.2f} ms"
    )
    return "\n".join(lines)


def log(message: str) -> None:
    sys.stderr.write(message + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, type=Path, help="artifact folder (model.onnx, model_repository/)")
    parser.add_argument("--out", type=Path, default=Path("bench/embedders.json"))
    parser.add_argument("--requests", type=int, default=128, help="requests per backend and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, len(os.sched_getaffinity(0))}))
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.artifact, args.concurrency, args.requests, args.threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(markdown(report) + f"\n\nwritten to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
