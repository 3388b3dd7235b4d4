"""End-to-end search latency over HTTP: p50/p99 and requests/s at each concurrency.

Against a running server:
    python -m client.bench --url http://127.0.0.1:8000 --images data/synth/query --concurrency 1,8 --requests 200
Or let it start the server itself (a temporary gallery filled through the API unless --gallery holds one),
for one backend or both in turn:
    python -m client.bench --artifact artifacts/demo --backend both --images data/synth/query --out bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from client.api import AsyncReIDClient, ReIDClient
from client.errors import ReIDError
from client.launch import free_port, serve
from formats.names import is_image_file


def load_images(folder: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in folder.rglob("*") if is_image_file(p))[:limit]
    if not paths:
        raise ValueError(f"no JPEG/PNG/WEBP images under {folder}")
    return [p.read_bytes() for p in paths]


async def measure(url: str, api_key: str | None, images: list[bytes], concurrency: int, requests: int) -> dict:
    """``requests`` searches spread over ``concurrency`` workers; latency of each, wall time of all."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    next_index = 0

    async with AsyncReIDClient(url, api_key=api_key, timeout=60) as reid:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                start = time.perf_counter()
                try:
                    await reid.search(images[i % len(images)], top_k=10)
                    statuses["200"] += 1
                    latencies.append(time.perf_counter() - start)
                except ReIDError as exc:
                    statuses[str(exc.status or exc.code)] += 1

        for _ in range(min(concurrency * 2, 10)):  # warm-up: connections, sessions, caches
            await reid.search(images[0], top_k=10)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start

    ms = np.array(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(latencies),
        "statuses": dict(statuses),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def fill_gallery(url: str, api_key: str | None, folder: Path, limit: int) -> int:
    """Add up to ``limit`` crops of ``folder`` through the API when the gallery is empty; returns its size."""
    with ReIDClient(url, api_key=api_key, timeout=120) as reid:
        if reid.stats().count == 0:
            images = load_images(folder, limit)
            for i in range(0, len(images), 16):
                batch = images[i : i + 16]
                reid.add(batch, [f"bench{i + j}" for j in range(len(batch))])
        return reid.stats().count


def run_all(url: str, args: argparse.Namespace, images: list[bytes], label: str) -> list[dict]:
    results = []
    for concurrency in args.concurrency:
        row = asyncio.run(measure(url, args.api_key, images, concurrency, args.requests))
        row["backend"] = label
        results.append(row)
        print(
            f"{label:<8} c={concurrency:<3} p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
            f"{row['requests_per_s']} req/s  statuses {row['statuses']}",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; without it the benchmark starts its own")
    parser.add_argument("--api-key", default=os.environ.get("REID_API_KEY"))
    parser.add_argument("--images", type=Path, default=Path("data/synth/query"), help="query crops")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=200, help="searches per concurrency level")
    parser.add_argument("--artifact", type=Path, help="artifact folder, when the benchmark starts the server")
    parser.add_argument("--backend", choices=["onnx", "triton", "both"], default="onnx")
    parser.add_argument("--gallery", type=Path, help="gallery folder (default: a temporary one, filled from --fill)")
    parser.add_argument(
        "--fill", type=Path, default=Path("data/synth/bounding_box_test"), help="crops for an empty gallery"
    )
    parser.add_argument("--fill-limit", type=int, default=500)
    parser.add_argument("--out", type=Path, help="write results to OUT/api_latency.json")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    images = load_images(args.images, 256)

    results: list[dict] = []
    meta = {"images": str(args.images), "host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    if args.url:
        results += run_all(args.url, args, images, "server")
    else:
        if args.artifact is None:
            parser.error("give --url of a running server, or --artifact to start one")
        backends = ["onnx", "triton"] if args.backend == "both" else [args.backend]
        with tempfile.TemporaryDirectory(prefix="reid-bench-") as tmp:
            gallery = args.gallery or Path(tmp) / "gallery"
            for backend in backends:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                with serve(
                    artifact=args.artifact,
                    gallery=gallery,
                    triton=backend == "triton",
                    port=port,
                    triton_port=free_port(),
                    wait_ready_s=300,
                ):
                    meta[f"gallery_size_{backend}"] = fill_gallery(url, args.api_key, args.fill, args.fill_limit)
                    results += run_all(url, args, images, backend)
        meta["artifact"] = str(args.artifact)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "api_latency.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
