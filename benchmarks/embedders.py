"""Embedder throughput and latency: ONNX Runtime in-process (with and without micro-batching) vs a local Triton.

    python -m benchmarks.embedders --artifact artifacts/demo [--out bench/embedders.json] [--requests 128]

Each request is one crop (what a search sends). For every backend and concurrency (1, 8, 32 callers sharing one
embedder) it reports images/s and the median / p95 request latency; then the per-request overhead of the Triton
hop (median latency at concurrency 1, Triton minus in-process ONNX Runtime without micro-batching) and, to choose
OnnxEmbedder's intra-op threads, images/s for each thread count at batch 1 and at the model's max batch.
The requests of each cell are spread over interleaved rounds so that other work on a shared host weighs on
every cell alike (keep requests/rounds >= the largest concurrency).
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
from pathlib import Path

import numpy as np
import onnxruntime as ort

from embedders.base import Embedder
from embedders.local_triton import LocalTriton
from embedders.onnx import OnnxEmbedder
from embedders.triton import TritonEmbedder


def random_images(embedder: Embedder, n: int, seed: int = 0) -> np.ndarray:
    spec = embedder.spec
    return np.random.default_rng(seed).integers(0, 256, (n, spec.input.height, spec.input.width, 3), dtype=np.uint8)


class Sample:
    """Latencies and busy time of one (backend, concurrency) cell, accumulated over the rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.elapsed = 0.0
        self.images = 0

    def summary(self) -> dict:
        ordered = sorted(self.latencies)
        return {
            "requests": len(ordered),
            "images_per_s": round(self.images / self.elapsed, 1),
            "p50_ms": round(1000 * statistics.median(ordered), 3),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3),
        }


async def load(embedder: Embedder, sample: Sample, *, concurrency: int, requests: int, batch: int = 1) -> None:
    """``requests`` calls of ``batch`` images each from ``concurrency`` callers at once, recorded into sample."""
    pool = random_images(embedder, 64)
    remaining = requests

    async def caller(worker: int) -> None:
        nonlocal remaining
        i = worker
        while remaining > 0:
            remaining -= 1
            images = pool[(i * batch) % (len(pool) - batch + 1) :][:batch]
            start = time.perf_counter()
            await embedder.embed(images)
            sample.latencies.append(time.perf_counter() - start)
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(caller(w) for w in range(concurrency)))
    sample.elapsed += time.perf_counter() - start
    sample.images += requests * batch


async def bench_backends(embedders: dict[str, Embedder], concurrencies: list[int], requests: int, rounds: int):
    """Every (backend, concurrency) cell gets requests/rounds requests per round, the rounds interleaved, so load
    from other work on the host spreads over all cells instead of skewing whichever ran at the time."""
    samples = {(name, c): Sample() for name in embedders for c in concurrencies}
    for embedder in embedders.values():
        await embedder.embed(random_images(embedder, 1))  # warm-up: first-call allocations stay out
    for round_ in range(rounds):
        for (name, concurrency), sample in samples.items():
            await load(embedders[name], sample, concurrency=concurrency, requests=max(1, requests // rounds))
        log(f"round {round_ + 1}/{rounds} done")
    rows = []
    for (name, concurrency), sample in samples.items():
        rows.append({"backend": name, "concurrency": concurrency, **sample.summary()})
        log(f"{name:<16} c={concurrency:<3} {rows[-1]['images_per_s']:>8.1f} img/s  p50 {rows[-1]['p50_ms']:.2f} ms")
    return rows


async def bench_threads(model: Path, thread_counts: list[int], requests: int, rounds: int) -> list[dict]:
    embedders = {t: OnnxEmbedder(model, intra_op_threads=t, micro_batch=False) for t in thread_counts}
    for embedder in embedders.values():
        await embedder.start()
    max_batch = next(iter(embedders.values())).spec.max_batch_size
    samples = {(t, b): Sample() for t in thread_counts for b in (1, max_batch)}
    for _ in range(rounds):
        for (threads, batch), sample in samples.items():
            calls = max(1, requests // rounds // batch)
            await load(embedders[threads], sample, concurrency=1, requests=calls, batch=batch)
    for embedder in embedders.values():
        await embedder.close()
    rows = [{"intra_op_threads": t, "batch": b, **sample.summary()} for (t, b), sample in samples.items()]
    for row in rows:
        log(f"onnx threads={row['intra_op_threads']:<2} batch={row['batch']:<3} {row['images_per_s']:>8.1f} img/s")
    return rows


async def run(artifact: Path, concurrencies: list[int], requests: int, rounds: int, thread_counts: list[int]) -> dict:
    model = artifact / "model.onnx"
    load_before = os.getloadavg()
    with LocalTriton(artifact) as triton:
        embedders: dict[str, Embedder] = {
            "onnx": OnnxEmbedder(model, micro_batch=False),
            "onnx+microbatch": OnnxEmbedder(model),
            # queueing at c=32 on a slow CPU model outlasts a serving deadline; this measures, it does not serve
            "triton-grpc": TritonEmbedder(triton.url_grpc, triton.model_name, "grpc", timeout_s=600),
            "triton-http": TritonEmbedder(triton.url_http, triton.model_name, "http", timeout_s=600),
        }
        for embedder in embedders.values():
            await embedder.start()
        try:
            results = await bench_backends(embedders, concurrencies, requests, rounds)
        finally:
            for embedder in embedders.values():
                await embedder.close()
    threads = await bench_threads(model, thread_counts, requests, rounds)
    p50 = {r["backend"]: r["p50_ms"] for r in results if r["concurrency"] == 1}
    return {
        "artifact": str(artifact),
        "host": {
            "cpus": len(os.sched_getaffinity(0)),
            # other work on the host skews every figure: the 1-minute load average before and after
            "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "machine": platform.machine(),
            "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers(),
        },
        "requests_per_cell": requests,
        "rounds": rounds,
        "results": results,
        "triton_overhead_ms_c1": {
            protocol: round(p50[f"triton-{protocol}"] - p50["onnx"], 3) for protocol in ("grpc", "http")
        }
        if 1 in concurrencies
        else {},
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, type=Path, help="artifact folder (model.onnx, model_repository/)")
    parser.add_argument("--out", type=Path, default=Path("bench/embedders.json"))
    parser.add_argument("--requests", type=int, default=128, help="requests per backend and concurrency")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the requests are spread over")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, len(os.sched_getaffinity(0))}))
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.artifact, args.concurrency, args.requests, args.rounds, args.threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(markdown(report) + f"\n\nwritten to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
