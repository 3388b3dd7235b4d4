"""Index benchmark: search latency, QPS and recall@10 per index type and gallery size, plus open and recovery.

    python -m benchmarks.gallery --sizes 10000,100000 --dim 2048 --out bench/index.json
    python -m benchmarks.gallery --sizes 1000000 --dim 128 --out bench/index-1m.json
    python -m benchmarks.gallery --threads-only --out bench/index-threads.json

And per gallery backend (--serving; embedded, milvus-lite, or a Milvus server with --milvus-uri): search p50/p99
at concurrency 4 on an idle gallery and while a writer adds 16 items at a time, as fast as it can (--concurrent),
and single-query p50/p99 with and without a camera filter at each size:

    python -m benchmarks.gallery --serving --backend embedded --concurrent --sizes 10000 --artifact artifacts/demo
    python -m benchmarks.gallery --serving --backend milvus-lite --sizes 1000000 --dim 512 --out bench/gallery-1m.json

--dispatch serial runs every gallery call on one thread, as the server did before searches and writes were
separated (a search waits for the add in front of it); the default, pool, is the server now: searches on a pool
of threads, writes on their own thread.

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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from index.gallery import Gallery, Record
from index.records import SearchFilter

MODEL = "bench"
K = 10
CAMERAS = 6  # the serving benchmark's records come from this many cameras; the filter keeps one of them
WRITER_BATCH = 16  # items per add of the continuous writer (a full API gallery batch is 32 at most)
FILL_BATCH = 10_000
DEMO_DIM = 512  # the demo artifact's embedding size (ResNet-18 APNet), when no --artifact is given


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


# -- per backend: searches beside a writer, filters ----------------------------------------------------------


def _percentiles(lat: list[float] | np.ndarray) -> dict:
    lat = np.asarray(lat)
    return {
        "searches": int(len(lat)),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
    }


def bench_records(start: int, n: int) -> list[Record]:
    return [Record(person_id=f"p{(start + i) % 1000}", camera_id=f"c{(start + i) % CAMERAS}") for i in range(n)]


def open_backend(backend: str, folder: Path, name: str, dim: int, args):
    """A new, empty gallery of ``backend`` (imported here: the embedded sweep needs no Milvus packages)."""
    from index.backends import open_gallery

    if backend == "embedded":
        uri: str = str(folder / name)
    elif backend == "milvus-lite":
        uri = str(folder / f"{name}.db")
    else:
        uri = f"{args.milvus_uri.rstrip('/').rsplit('/', 1)[0]}/bench_{name}"
    return open_gallery(uri, model_id=MODEL, dim=dim, factory=args.serving_factory)


def fill(gallery, xb: np.ndarray) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(xb), FILL_BATCH):
        chunk = xb[start : start + FILL_BATCH]
        gallery.add(chunk, bench_records(start, len(chunk)), model_id=MODEL)
    return time.perf_counter() - t0


def concurrent_searches(gallery, xq: np.ndarray, xw: np.ndarray | None, searchers: int, per_thread: int, dispatch: str):
    """p50/p99 of ``searchers`` threads searching ``per_thread`` times each; with ``xw``, a writer adds it
    WRITER_BATCH at a time, without pause, until the searches are done."""
    serial = ThreadPoolExecutor(1, thread_name_prefix="gallery") if dispatch == "serial" else None

    def call(fn, *a, **kw):
        return serial.submit(fn, *a, **kw).result() if serial is not None else fn(*a, **kw)

    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    start = threading.Barrier(searchers + (xw is not None))
    added = [0]

    def search(t: int) -> None:
        mine = []
        start.wait()
        for i in range(per_thread):
            q = xq[(t * per_thread + i) % len(xq)]
            t0 = time.perf_counter()
            call(gallery.search, q, K, model_id=MODEL)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    def write() -> None:
        start.wait()
        i = 0
        while not done.is_set():
            chunk = xw[i % len(xw) : i % len(xw) + WRITER_BATCH]
            call(gallery.add, chunk, bench_records(i, len(chunk)), model_id=MODEL)
            added[0] += len(chunk)
            i += WRITER_BATCH

    threads = [threading.Thread(target=search, args=(t,)) for t in range(searchers)]
    writer = threading.Thread(target=write) if xw is not None else None
    t0 = time.perf_counter()
    for t in threads + ([writer] if writer else []):
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    if writer:
        writer.join()
    if serial is not None:
        serial.shutdown()
    out = _percentiles(latencies)
    if xw is not None:
        out["writer_items_per_s"] = round(added[0] / wall, 1)
    return out


def filtered_latencies(gallery, xq: np.ndarray) -> dict:
    """Single queries one after another: no filter, and one camera of CAMERAS."""
    one_camera = SearchFilter(cameras=["c1"])
    out = {}
    for name, f in (("no_filter", None), ("camera_filter", one_camera)):
        lat = latencies(lambda q, f=f: gallery.search(q, K, f, model_id=MODEL), xq)
        out[name] = _percentiles(lat)
    return out


def bench_serving(backend: str, folder: Path, n: int, dim: int, args) -> dict:
    x = unit_vectors(n + args.queries + 20_000, dim, args.clusters, seed=n)
    xb, xq, xw = x[:n], x[n : n + args.queries], x[n + args.queries :]
    name = f"{backend.replace('-', '_')}_{n}"
    gallery = open_backend(backend, folder, name, dim, args)
    try:
        fill_s = fill(gallery, xb)
        result = {"backend": backend, "n": n, "dim": dim, "factory": args.serving_factory, "fill_s": round(fill_s, 1)}
        result["single"] = filtered_latencies(gallery, xq)
        if args.concurrent:
            per = max(1, args.queries // 4)
            result["dispatch"] = args.dispatch
            result["idle_c4"] = concurrent_searches(gallery, xq, None, 4, per, args.dispatch)
            result["writing_c4"] = concurrent_searches(gallery, xq, xw, 4, per, args.dispatch)
            result["ratio_p99"] = round(result["writing_c4"]["p99_ms"] / result["idle_c4"]["p99_ms"], 2)
    finally:
        gallery.close()
    print(json.dumps(result), flush=True)
    return result


# -- factory "auto" (index.growth): grown through add, then searched with and without filters ----------------------

GROWTH_CAMERAS = 16  # the camera filter keeps 1/16 of the gallery
TIME_FILTERS = (0.01, 0.10, 0.50)  # capture-time windows keeping these fractions (captured_at = item number)


def rss_bytes() -> dict:
    """This process's resident memory now and at its peak (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[v].split()[0]) * 1024 for k, v in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def growth_chunks(n: int, dim: int, clusters: int, seed: int):
    """(start, xb) chunks of unit vectors around the same ``clusters`` people whatever the seed, generated on the fly
    (the gallery is never held whole here: the RSS measured is the gallery's)."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, FILL_BATCH):
        m = min(FILL_BATCH, n - start)
        x = centres[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32)
        yield start, x / np.linalg.norm(x, axis=1, keepdims=True)


def growth_filters(n: int) -> dict[str, SearchFilter | None]:
    out: dict[str, SearchFilter | None] = {"none": None, f"camera_1/{GROWTH_CAMERAS}": SearchFilter(cameras=["c3"])}
    for frac in TIME_FILTERS:
        out[f"time_{round(frac * 100)}%"] = SearchFilter(time_from=0.0, time_to=frac * n - 1)
    return out


def growth_records(start: int, m: int) -> list[Record]:
    return [
        Record(person_id=f"p{(start + i) % 5000}", camera_id=f"c{(start + i) % GROWTH_CAMERAS}", captured_at=start + i)
        for i in range(m)
    ]


def fill_growth(gallery, n: int, dim: int, xq: np.ndarray, filters: dict, clusters: int) -> tuple[float, dict, dict]:
    """Fill through Gallery.add (the normal path, builds starting on their own thread as it grows); the exact
    (filtered) top K of ``xq`` over the same chunks."""
    heaps = {name: faiss.ResultHeap(len(xq), K, keep_max=True) for name in filters}
    adds = []  # seconds per add of FILL_BATCH items: the longest ones waited for a switch's catch-up and snapshot
    t0 = time.perf_counter()
    for start, xb in growth_chunks(n, dim, clusters, seed=n):
        records = growth_records(start, len(xb))
        t1 = time.perf_counter()
        ids = np.asarray(gallery.add(xb, records, model_id=MODEL), dtype=np.int64)
        adds.append(time.perf_counter() - t1)
        scores = xq @ xb.T
        for name, f in filters.items():
            keep = np.ones(len(xb), bool) if f is None else np.array([f.matches(r) for r in records])
            if keep.any():
                heaps[name].add_result(np.ascontiguousarray(scores[:, keep]), np.tile(ids[keep], (len(xq), 1)))
    fill_s = time.perf_counter() - t0
    for h in heaps.values():
        h.finalize()
    add_s = {"median": round(float(np.median(adds)), 2), "max": round(max(adds), 2), "batch": FILL_BATCH}
    return fill_s, {name: h.I for name, h in heaps.items()}, add_s


def searches_at(gallery, xq: np.ndarray, f, concurrency: int) -> tuple[dict, list[list[int]]]:
    """p50/p99 of single-query searches, ``concurrency`` threads at once; the ids found per query."""
    found: list[list[int]] = [[] for _ in range(len(xq))]

    def one(i: int) -> float:
        t0 = time.perf_counter()
        hits = gallery.search(xq[i], K, f, model_id=MODEL)[0]
        found[i] = [h.id for h in hits]
        return time.perf_counter() - t0

    gallery.search(xq[0], K, f, model_id=MODEL)  # warm-up (the filter columns are read on first use)
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(one, range(len(xq))))
    return _percentiles(lat), found


def recall_vs(found: list[list[int]], truth: np.ndarray) -> float:
    """Mean recall@K against exact (filtered) ids; a filter keeping fewer than K items asks for fewer."""
    rows = [
        len(set(f) & set(t[t >= 0])) / max(1, min(K, int((t >= 0).sum()))) for f, t in zip(found, truth, strict=True)
    ]
    return round(float(np.mean(rows)), 4)


def bench_growth(folder: Path, n: int, dim: int, args) -> dict:
    xq = next(growth_chunks(args.queries, dim, args.clusters, seed=n + 1))[1]  # the same people, not in the gallery
    filters = growth_filters(n)
    before = rss_bytes()
    gallery = Gallery.create(folder / f"growth_{n}", model_id=MODEL, dim=dim, factory=args.growth_factory)
    try:
        fill_s, truth, add_s = fill_growth(gallery, n, dim, xq, filters, args.clusters)
        t0 = time.perf_counter()
        if gallery._growth is not None:
            gallery._growth.wait()  # the last build the fill started
        result = {"n": n, "dim": dim, "factory": args.growth_factory, "fill_s": round(fill_s, 1)}
        result["fill_items_per_s"] = round(n / fill_s, 1)
        result["add_seconds"] = add_s
        result["wait_last_build_s"] = round(time.perf_counter() - t0, 1)
        stats = gallery.stats()
        result["index_choice"] = stats["index_choice"]
        result["rss_after_fill"] = rss_bytes()
        result["rss_before"] = before
        result["searches"] = {}
        for name, f in filters.items():
            row = {}
            for c in args.concurrency:
                row[f"c{c}"], found = searches_at(gallery, xq, f, c)
            row["recall_at_10"] = recall_vs(found, truth[name])
            result["searches"][name] = row
        result["rss_after_searches"] = rss_bytes()
        result["rss_per_item"] = round((result["rss_after_searches"]["rss"] - before["rss"]) / n, 1)
    finally:
        gallery.close()
    path = folder / f"growth_{n}"
    result["disk_bytes"] = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
    result["rss_serving_process"] = rss_of_reader(path, dim, args)
    print(json.dumps(result), flush=True)
    return result


READER = """
import json, sys, numpy as np
from benchmarks.gallery import MODEL, K, growth_chunks, growth_filters, rss_bytes
from index.gallery import Gallery
path, n, dim, clusters, queries = sys.argv[1], *map(int, sys.argv[2:])
before = rss_bytes()
xq = next(growth_chunks(queries, dim, clusters, seed=n + 1))[1]
with Gallery.open(path, readonly=True, threads=1) as g:
    for f in growth_filters(n).values():
        for q in xq:
            g.search(q, K, f, model_id=MODEL)
    print(json.dumps({"before_open": before, "after_searches": rss_bytes(), "items": len(g)}))
"""


def rss_of_reader(path: Path, dim: int, args) -> dict:
    """RSS of a fresh process that opens the gallery read-only and serves every filter's queries: the memory a
    serving process holds, without what the fill and the builds left in this one's heap."""
    import subprocess

    n = int(path.name.split("_")[-1])
    argv = [sys.executable, "-c", READER, str(path), str(n), str(dim), str(args.clusters), str(args.queries)]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    out["bytes_per_item"] = round((out["after_searches"]["rss"] - out["before_open"]["rss"]) / out["items"], 1)
    return out


def bench_milvus_server(n: int, dim: int, args) -> dict:
    """The same data straight into a Milvus server through pymilvus (not through index.milvus, whose schema needs
    Milvus 2.4+): insert rate, index build, p50/p99 and recall@10 with and without a camera filter."""
    from pymilvus import DataType, MilvusClient

    from index.uri import parse_uri

    client = MilvusClient(parse_uri(args.milvus_uri).address, timeout=600)
    name = f"bench_server_{n}"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("camera", DataType.VARCHAR, max_length=16)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(name, schema=schema)
    xq = next(growth_chunks(args.queries, dim, args.clusters, seed=n + 1))[1]
    filters = {"none": (None, ""), f"camera_1/{GROWTH_CAMERAS}": (SearchFilter(cameras=["c3"]), 'camera == "c3"')}
    heaps = {key: faiss.ResultHeap(len(xq), K, keep_max=True) for key in filters}
    t0 = time.perf_counter()
    for start, xb in growth_chunks(n, dim, args.clusters, seed=n):
        ids = np.arange(start + 1, start + 1 + len(xb), dtype=np.int64)
        cams = [f"c{(start + i) % GROWTH_CAMERAS}" for i in range(len(xb))]
        client.insert(name, [{"id": int(i), "camera": c, "vector": v} for i, c, v in zip(ids, cams, xb, strict=True)])
        scores = xq @ xb.T
        for key, (f, _) in filters.items():
            keep = np.ones(len(xb), bool) if f is None else np.array([c in f.cameras for c in cams])
            heaps[key].add_result(np.ascontiguousarray(scores[:, keep]), np.tile(ids[keep], (len(xq), 1)))
    client.flush(name)
    insert_s = time.perf_counter() - t0
    index = client.prepare_index_params()
    index.add_index("vector", index_type=args.milvus_index, metric_type="IP", params=MILVUS_BUILD[args.milvus_index])
    t0 = time.perf_counter()
    client.create_index(name, index, sync=True)
    client.load_collection(name)
    build_s = time.perf_counter() - t0
    result = {"backend": "milvus-server", "version": client.get_server_version(), "n": n, "dim": dim}
    result.update(
        index=args.milvus_index, insert_items_per_s=round(n / insert_s, 1), index_and_load_s=round(build_s, 1)
    )
    for h in heaps.values():
        h.finalize()
    for key, (_, expr) in filters.items():
        found, lat = [], []
        for q in xq:
            t1 = time.perf_counter()
            res = client.search(name, [q.tolist()], limit=K, filter=expr, search_params={"params": MILVUS_SEARCH})
            lat.append(time.perf_counter() - t1)
            found.append([hit["id"] for hit in res[0]])
        truth = heaps[key].I
        recall = np.mean([len(set(f) & set(t[t >= 0])) / K for f, t in zip(found, truth, strict=True)])
        result[key] = {**_percentiles(lat), "recall_at_10": round(float(recall), 4)}
    client.drop_collection(name)
    print(json.dumps(result), flush=True)
    return result


MILVUS_BUILD = {"IVF_SQ8": {"nlist": 2048}, "HNSW": {"M": 16, "efConstruction": 200}, "FLAT": {}}
MILVUS_SEARCH = {"nprobe": 16, "ef": 64}


def artifact_dim(artifact: Path | None) -> int:
    if artifact is None:
        return DEMO_DIM
    from formats.spec import ModelSpec

    return ModelSpec.from_json((artifact / "spec.json").read_text()).dim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gallery", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma separated (0: none)")
    p.add_argument("--dim", type=int, default=None, help=f"default 2048 ({DEMO_DIM} with --serving)")
    p.add_argument("--factory", action="append", help="index type(s); default Flat, IVF<~4 sqrt N>,Flat, HNSW32")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--threads-only", action="store_true", help="only the OpenMP 1-vs-2-thread measurement")
    p.add_argument("--workdir", type=Path, default=None, help="where galleries are built (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="default bench/index.json (bench/gallery-BACKEND.json)")
    serving = p.add_argument_group("per gallery backend (--serving)")
    serving.add_argument("--serving", action="store_true", help="the per-backend benchmark instead of the sweep")
    serving.add_argument("--backend", choices=["embedded", "milvus-lite", "milvus"], default="embedded")
    serving.add_argument("--milvus-uri", help="milvus://HOST:PORT/COLLECTION for --backend milvus")
    serving.add_argument("--serving-factory", default="Flat", help="index type of the benchmarked gallery")
    serving.add_argument("--artifact", type=Path, help="take --dim from this artifact's spec.json")
    serving.add_argument("--concurrent", action="store_true", help="also c=4 idle and beside a writer")
    serving.add_argument("--dispatch", choices=["pool", "serial"], default="pool")
    grow = p.add_argument_group('factory "auto" grown through add (--growth)')
    grow.add_argument("--growth", action="store_true", help="fill from empty, then search filtered and not")
    grow.add_argument("--growth-factory", default="auto", help="auto[:flat_max=...], or Flat for the exact baseline")
    grow.add_argument("--concurrency", default="1,8", help="search threads, comma separated")
    grow.add_argument("--milvus-server", action="store_true", help="with --growth: straight into --milvus-uri")
    grow.add_argument("--milvus-index", choices=sorted(MILVUS_BUILD), default="IVF_SQ8")
    args = p.parse_args(argv)
    if args.serving:
        return main_serving(args, argv)
    if args.growth:
        return main_growth(args, argv)
    args.out = args.out or Path("bench/index.json")
    args.dim = args.dim or 2048

    report: dict = {
        "command": " ".join(["python -m benchmarks.gallery", *(argv if argv is not None else sys.argv[1:])]),
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


def main_serving(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.backend == "milvus" and not args.milvus_uri:
        raise SystemExit("--backend milvus needs --milvus-uri milvus://HOST:PORT/COLLECTION")
    dim = artifact_dim(args.artifact) if args.artifact else args.dim or DEMO_DIM
    out = args.out or Path(f"bench/gallery-{args.backend}.json")
    report: dict = {
        "command": " ".join(["python -m benchmarks.gallery", *(argv if argv is not None else sys.argv[1:])]),
        "host": {"cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(), "faiss": faiss.__version__},
        "runs": [],
    }
    folder = Path(tempfile.mkdtemp(prefix="gallery-bench-", dir=args.workdir))
    try:
        for n in [int(s) for s in args.sizes.split(",") if int(s) > 0]:
            report["runs"].append(bench_serving(args.backend, folder, n, dim, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def main_growth(args: argparse.Namespace, argv: list[str] | None) -> int:
    dim = args.dim or DEMO_DIM
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    out = args.out or Path("bench/gallery-growth.json")
    report: dict = {
        "command": " ".join(["python -m benchmarks.gallery", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "host": {"cpus": len(os.sched_getaffinity(0)), "load": os.getloadavg(), "faiss": faiss.__version__},
        "runs": [],
    }
    folder = Path(tempfile.mkdtemp(prefix="gallery-growth-", dir=args.workdir))
    try:
        for n in [int(s) for s in args.sizes.split(",") if int(s) > 0]:
            bench = bench_milvus_server if args.milvus_server else bench_growth
            report["runs"].append(bench(n, dim, args) if args.milvus_server else bench(folder, n, dim, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
