"""End-to-end search latency over HTTP: p50/p95/p99 and requests/s at each concurrency (with the server's own
decode / embed / search times, so the report can tell the request path's overhead from the model's time).

Against a running server:
    python -m benchmarks.http --url http://127.0.0.1:8000 --images data/synth/query --concurrency 1,8 --requests 200
Or let it start the server itself (a temporary gallery filled through the API unless --gallery holds one),
for one backend or both in turn:
    python -m benchmarks.http --artifact artifacts/demo --backend both --images data/synth/query --out bench
With --stalled N, the same searches idle and then while N uploads stall mid-body (raw sockets that send a head
with Content-Length and half the body, then nothing), and what the stalled uploads were answered (api_stall.json):
    python -m benchmarks.http --artifact artifacts/demo --images data/synth/query --concurrency 1 --stalled 32
With --variants, the request path variant by variant and form by form in one run (benchmarks.http_paths: multipart
and raw body, beside the served model alone, optionally against a --baseline-tree of today's code; api_paths.json):
    python -m benchmarks.http --artifact artifacts/demo --variants fp32,int8 --concurrency 1,8 --out bench
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import select
import socket
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks.http_paths import run_paths
from client.api import AsyncReIDClient, ReIDClient
from client.errors import ReIDError
from client.launch import free_port, serve
from formats.names import is_image_file


def load_images(folder: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in folder.rglob("*") if is_image_file(p))[:limit]
    if not paths:
        raise ValueError(f"no JPEG/PNG/WEBP images under {folder}")
    return [p.read_bytes() for p in paths]


async def measure(
    url: str, api_key: str | None, images: list[bytes], concurrency: int, requests: int, warmup: bool = True
) -> dict:
    """``requests`` searches spread over ``concurrency`` workers; latency of each, wall time of all. The warm-up
    searches (``warmup``) must succeed; the measured ones are counted by status."""
    latencies: list[float] = []
    server_ms: dict[str, list[float]] = {"decode": [], "embed": [], "search": []}  # as the server timed them
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
                    result = await reid.search(images[i % len(images)], top_k=10)
                    statuses["200"] += 1
                    latencies.append(time.perf_counter() - start)
                    for step in server_ms:
                        server_ms[step].append(getattr(result.timings, f"{step}_ms"))
                except ReIDError as exc:
                    statuses[str(exc.status or exc.code)] += 1

        for _ in range(min(concurrency * 2, 10) if warmup else 0):  # warm-up: connections, sessions, caches
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
        "p95_ms": round(float(np.percentile(ms, 95)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
        **{f"server_{step}_p50_ms": round(float(np.median(v)), 3) if v else None for step, v in server_ms.items()},
        # everything but the model step, request by request: HTTP, parsing, decode, gallery search, response
        "outside_embed_p50_ms": round(float(np.median(ms - np.array(server_ms["embed"]))), 3) if len(ms) else None,
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
            f"{label:<8} c={concurrency:<3} p50 {row['p50_ms']} ms  p95 {row['p95_ms']} ms  p99 {row['p99_ms']} ms  "
            f"{row['requests_per_s']} req/s  statuses {row['statuses']}",
            flush=True,
        )
    return results


def stall_upload(url: str, api_key: str | None, image: bytes) -> socket.socket:
    """A search upload that sends its head and half its body, then stalls (the socket stays open)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n'.encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    parts = urlsplit(url)
    headers = [
        f"POST {parts.path.rstrip('/')}/v1/search HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        headers.append(f"X-API-Key: {api_key}")
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
    sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body[: len(body) // 2])
    return sock


def answered(sock: socket.socket) -> bool:
    """Whether the server has answered (or closed) a stalled upload yet, without waiting."""
    return bool(select.select([sock], [], [], 0)[0])


def stalled_outcome(sock: socket.socket, wait_s: float) -> str:
    """The status a stalled upload was answered with within wait_s, or what happened instead."""
    sock.settimeout(max(wait_s, 0.01))
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        return str(response.status)
    except TimeoutError:
        return "no answer"
    except (http.client.RemoteDisconnected, ConnectionError):
        return "closed without answer"
    finally:
        response.close()
        sock.close()


def run_stalled(url: str, args: argparse.Namespace, images: list[bytes], label: str) -> list[dict]:
    """Search latency idle, then with ``args.stalled`` uploads stalled mid-body; how the stalls were answered."""
    rows = []
    for concurrency in args.concurrency:
        idle = asyncio.run(measure(url, args.api_key, images, concurrency, args.requests))
        stalls = [stall_upload(url, args.api_key, images[i % len(images)]) for i in range(args.stalled)]
        time.sleep(0.5)  # let the server take in every stalled head before the searches start
        stalled = asyncio.run(measure(url, args.api_key, images, concurrency, args.requests, warmup=False))
        still_stalled = sum(not answered(s) for s in stalls)  # the searches ran while these were open
        deadline = time.monotonic() + args.stall_wait
        outcomes = Counter(stalled_outcome(s, deadline - time.monotonic()) for s in stalls)
        ratio = None
        if idle["p50_ms"] and stalled["p50_ms"]:
            ratio = round(stalled["p50_ms"] / idle["p50_ms"], 2)
        row = {
            "backend": label,
            "concurrency": concurrency,
            "stalled_uploads": args.stalled,
            "idle": idle,
            "stalled": stalled,
            "stalled_still_open_after_searches": still_stalled,
            "stalled_upload_outcomes": dict(outcomes),
            "p50_ratio": ratio,
            "all_ok_within_2x": stalled["ok"] == stalled["requests"] and ratio is not None and ratio <= 2.0,
        }
        rows.append(row)
        print(
            f"{label:<8} c={concurrency:<3} idle p50 {idle['p50_ms']} ms {idle['statuses']}  with {args.stalled} "
            f"stalled uploads: p50 {stalled['p50_ms']} ms {stalled['statuses']} (x{ratio}); stalled uploads "
            f"{dict(outcomes)}, {still_stalled} still open when the searches ended",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__.split("\n\n")[0])
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
    parser.add_argument(
        "--out", type=Path, help="write results to OUT/api_latency.json (api_stall.json with --stalled)"
    )
    parser.add_argument(
        "--stalled", type=int, default=0, help="measure idle, then with this many uploads stalled mid-body"
    )
    parser.add_argument(
        "--stall-wait", type=float, default=40.0, help="seconds to wait for the stalled uploads' answers afterwards"
    )
    parser.add_argument("--variants", help="comma-separated variants to serve in turn (fp32,int8): the paths mode")
    parser.add_argument("--baseline-tree", type=Path, help="paths mode: also serve fp32 from this source tree")
    parser.add_argument("--rounds", type=int, default=4, help="paths mode: rounds over the configurations")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    images = load_images(args.images, 256)
    if args.variants:
        if args.artifact is None:
            parser.error("--variants needs --artifact")
        return run_paths_mode(args, images)

    results: list[dict] = []
    meta = {"images": str(args.images), "host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    run = run_stalled if args.stalled else run_all
    if args.url:
        results += run(args.url, args, images, "server")
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
                    create_gallery=True,
                ):
                    meta[f"gallery_size_{backend}"] = fill_gallery(url, args.api_key, args.fill, args.fill_limit)
                    results += run(url, args, images, backend)
        meta["artifact"] = str(args.artifact)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "api_stall.json" if args.stalled else "api_latency.json"
        (args.out / name).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


def servable_variants(artifact: Path, names: list[str]) -> list[str]:
    """The named variants the artifact can serve on this machine's CPU (the others said and skipped)."""
    from embedders.onnx import artifact_variant, read_artifact_spec
    from embedders.variants import VariantRefused

    spec = read_artifact_spec(artifact)
    if spec is None:
        return ["fp32"]  # an artifact without spec.json serves its model.onnx
    kept = []
    for name in names:
        try:
            kept.append(artifact_variant(spec, name, ["CPUExecutionProvider"]).name)
        except VariantRefused as exc:
            print(f"skipping variant {name}: {exc}", flush=True)
    return kept


def run_paths_mode(args: argparse.Namespace, images: list[bytes]) -> int:
    meta = {"images": str(args.images), "host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    meta |= {"artifact": str(args.artifact), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory(prefix="reid-bench-") as tmp:
        result = run_paths(
            args.artifact,
            images,
            load_images(args.fill, args.fill_limit),
            variants=servable_variants(args.artifact, [v for v in args.variants.split(",") if v]),
            concurrency=args.concurrency,
            requests=args.requests,
            rounds=args.rounds,
            baseline=args.baseline_tree,
            api_key=args.api_key,
            workdir=Path(tmp),
            log=lambda line: print(line, flush=True),
        )
    meta["load_after"] = os.getloadavg()
    for row in result["rows"]:
        print(
            f"{row['config']:<9} {row['form']:<9} c={row['concurrency']:<3} p50 {row['p50_ms']} p95 {row['p95_ms']} "
            f"p99 {row['p99_ms']} ms; model alone p50 {row['model_alone_p50_ms']} ms; outside the model "
            f"{row['outside_model_p50_ms']} ms (HTTP and parsing {row['http_and_parsing_p50_ms']}, decode "
            f"{row['server_decode_p50_ms']}, search {row['server_search_p50_ms']})",
            flush=True,
        )
    print(f"p50 at c=1 over the baseline's: {result['ratios']}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "api_paths.json").write_text(json.dumps({"meta": meta, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
