"""Index benchmark: search latency, QPS and recall@10 per index type and gallery size, plus open and recovery.

    python -m index.bench --sizes 10000,100000 --dim 2048 --out bench/index.json
    python -m index.bench --sizes 1000000 --dim 128 --out bench/index-1m.json
    python -m index.bench --threads-only --out bench/index-threads.json

Vectors are synthetic unit vectors around random centres (like embeddings of people seen several times).
Each gallery is built through Gallery.add, so the SQLite log is part of what is measured. Latency is for
single queries (nq=1, k=10), one after another on one thread; QPS = 1 / mean latency. Recall@10 is against
exact inner-product search (IndexFlatIP). Memory per vector is the snapshot's size (the in-memory index)
and the log's size (SQLite, vectors + metadata) divided by N. Open time is Gallery.open from a clean
snapshot; recovery time is Gallery.open with the snapshot deleted (rebuilt, and retrained, from the log).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from index.gallery import Gallery, Record

MODEL = "bench"
K = 10


def unit_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):  # in chunks: bounded temporary memory at 1M
        m = min(50_000, n - start)
        x = centres[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def default_factories(n: int) -> list[str]:
    nlist = 2 ** int(math.log2(max(16, 4 * math.sqrt(n))))  # ~4 sqrt(N) lists, the usual rule of thumb
    return ["Flat", f"IVF{nlist},Flat", "HNSW32"]


def latencies(fn, xq: np.ndarray) -> np.ndarray:
    fn(xq[:1])  # warm-up
    out = np.empty(len(xq))
    for i in range(len(xq)):
        t0 = time.perf_counter()
        fn(xq[i : i + 1])
        out[i] = time.perf_counter() - t0
    return out


def bench_factory(folder: Path, factory: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> dict:
    n, dim = xb.shape
    path = folder / factory.replace(",", "_")
    t0 = time.perf_counter()
    with Gallery.create(
        path, model_id=MODEL, dim=dim, factory=factory, nprobe=args.nprobe, ef_search=args.ef_search
    ) as g:
        for start in range(0, n, 10_000):
            g.add(xb[start : start + 10_000], [Record()] * min(10_000, n - start), model_id=MODEL)
        trained = g.stats()["trained"]
    build_s = time.perf_counter() - t0  # adds (log commits + index) and the final snapshot
    index_bytes = sum(p.stat().st_size for p in path.glob("index.*.faiss"))
    log_bytes = sum(p.stat().st_size for p in path.glob("gallery.sqlite*"))

    with Gallery.open(path, readonly=True, threads=1) as g:
        open_s = g.stats()["open_seconds"]
        lat = latencies(lambda q: g.search(q, K, model_id=MODEL), xq)
        found = [[h.id - 1 for h in row] for row in g.search(xq, K, model_id=MODEL)]  # ids start at 1
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))

    for p in path.glob("index.*.faiss"):
        p.unlink()
    with Gallery.open(path) as g:  # the snapshot is gone: rebuilt from the log (retrained for IVF)
        recovery_s = g.stats()["open_seconds"]
        assert g.stats()["recovered"], "recovery did not run"
    shutil.rmtree(path)
    result = {
        "n": n,
        "dim": dim,
        "factory": factory,
        "trained": trained,
        "nprobe": args.nprobe if factory.startswith("IVF") else None,
        "ef_search": args.ef_search if factory.startswith("HNSW") else None,
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        "qps": round(1.0 / float(lat.mean()), 1),
        "recall_at_10": round(recall, 4),
        "index_bytes_per_vector": round(index_bytes / n, 1),
        "log_bytes_per_vector": round(log_bytes / n, 1),
        "build_s": round(build_s, 2),
        "open_s": round(open_s, 3),
        "recovery_s": round(recovery_s, 3),
    }
    print(json.dumps(result), flush=True)
    return result


def bench_threads(n: int = 10_000, dim: int = 512, queries: int = 200) -> dict:
    """Single-query Flat search with 1 and 2 OpenMP threads (the basis of faiss_index.SMALL_BATCH)."""
    xb = unit_vectors(n, dim, 100, 0)
    index = faiss.IndexFlatIP(dim)
    index.add(xb)
    xq = unit_vectors(queries, dim, 100, 1)
    out = {}
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        lat = latencies(lambda q: index.search(q, K), xq)
        out[f"{threads}_threads"] = {
            "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        }
    faiss.omp_set_num_threads(1)
    print(json.dumps({"threads": out}), flush=True)
    return {"n": n, "dim": dim, "k": K, **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m index.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma separated (0: none)")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--factory", action="append", help="index type(s); default Flat, IVF<~4 sqrt N>,Flat, HNSW32")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--threads-only", action="store_true", help="only the OpenMP 1-vs-2-thread measurement")
    p.add_argument("--workdir", type=Path, default=None, help="where galleries are built (default: a temp dir)")
    p.add_argument("--out", type=Path, default=Path("bench/index.json"))
    args = p.parse_args(argv)

    report: dict = {
        "command": " ".join(["python -m index.bench", *(argv if argv is not None else sys.argv[1:])]),
        "host": {"cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(), "faiss": faiss.__version__},
        "runs": [],
    }
    report["threads"] = bench_threads()
    folder = Path(tempfile.mkdtemp(prefix="index-bench-", dir=args.workdir))
    try:
        if not args.threads_only:
            for n in [int(s) for s in args.sizes.split(",") if int(s) > 0]:
                x = unit_vectors(n + args.queries, args.dim, args.clusters, seed=n)
                xb, xq = x[:n], x[n:]
                exact = faiss.IndexFlatIP(args.dim)
                exact.add(xb)
                faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
                _, truth = exact.search(xq, K)
                del exact
                for factory in args.factory or default_factories(n):
                    report["runs"].append(bench_factory(folder, factory, xb, xq, truth, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
