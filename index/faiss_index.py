"""faiss indexes by factory string, numpy in, numpy out (faiss-contrib vocabulary: xb, xq, D, I, k).

Every index holds our own int64 ids. "Flat" and "HNSW{M}" sit inside an IndexIDMap2; IVF indexes store
ids natively (an IDMap around an IVF index breaks on remove_ids, which renumbers only compacting indexes).
HNSW cannot remove vectors: the gallery keeps removed ids as tombstones and filters them. "auto" is not a faiss
index but a policy (index.growth): exact Flat while the gallery is small, then IVF with a compressed code, picked
again as the gallery grows; what it serves at a given moment is one of the indexes above (``describe``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import faiss
import numpy as np

FACTORY_PATTERNS = {
    "flat": re.compile(r"Flat"),
    "ivf": re.compile(r"IVF(\d+),(Flat|SQ8|PQ(\d+)(?:x(\d+))?)"),
    "hnsw": re.compile(r"HNSW(\d+)(?:,Flat)?"),
    "auto": re.compile(r"auto(?::[a-z_]+=[0-9.]+(?:,[a-z_]+=[0-9.]+)*)?"),
}
TRAIN_POINTS_PER_CENTROID = 39  # below this faiss k-means warns that clustering is unreliable
DEFAULT_EF_SEARCH = 64  # faiss's default of 16 loses recall at k=10
DEFAULT_NPROBE = 16
# Batches of up to SMALL_BATCH queries search on one OpenMP thread. Measured with `python -m benchmarks.gallery
# --threads` (IndexFlatIP 10k x 512, k=10, faiss-cpu 1.15.1, 2-core host shared with other jobs):
#   nq=1:  1 thread p50 0.81 ms / p99 0.99 ms;  2 threads p50 1.60 ms / p99 20.0 ms (OpenMP wake-up and spinning)
#   nq=16: 1 thread p50 15.8 ms / p99 20.4 ms;  2 threads p50 10.8 ms / p99 33.9 ms
# Parallelism for single queries comes from concurrent requests instead. omp_set_num_threads is per calling
# thread in OpenMP, so each searching thread sets its own.
SMALL_BATCH = 16


@dataclass(frozen=True)
class IndexKind:
    factory: str
    family: str  # "flat" | "ivf" | "hnsw"
    nlist: int = 0
    pq_m: int = 0
    pq_nbits: int = 8

    @property
    def needs_training(self) -> bool:
        return self.family == "ivf"

    @property
    def can_remove(self) -> bool:
        return self.family != "hnsw"

    @property
    def min_train_size(self) -> int:
        """Vectors needed before the index is trained; until then the gallery serves exactly."""
        if not self.needs_training:
            return 0
        n = TRAIN_POINTS_PER_CENTROID * self.nlist
        if self.pq_m:
            n = max(n, TRAIN_POINTS_PER_CENTROID * (1 << self.pq_nbits))
        return n


def parse_factory(factory: str, dim: int) -> IndexKind:
    """Validate a factory string against the index types the gallery supports and tests."""
    for family, pattern in FACTORY_PATTERNS.items():
        m = pattern.fullmatch(factory)
        if m is None:
            continue
        if family == "ivf":
            nlist = int(m.group(1))
            pq_m = int(m.group(3) or 0)
            nbits = int(m.group(4) or 8)
            if nlist < 1:
                raise ValueError(f"factory {factory!r}: IVF needs at least one list")
            if pq_m and dim % pq_m:
                raise ValueError(f"factory {factory!r}: PQ{pq_m} does not divide the dimension {dim}")
            return IndexKind(factory, family, nlist=nlist, pq_m=pq_m, pq_nbits=nbits)
        return IndexKind(factory, family)
    raise ValueError(
        f"unsupported index factory {factory!r}; use auto[:key=value,...], Flat, IVF<n>,Flat, IVF<n>,SQ8,"
        " IVF<n>,PQ<m> or HNSW<M>"
    )


def exact_index(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def empty_index(kind: IndexKind, dim: int) -> faiss.Index:
    """A new, empty index of ``kind``, untrained if the kind needs training."""
    if kind.family == "flat":
        return exact_index(dim)
    inner = faiss.index_factory(dim, kind.factory, faiss.METRIC_INNER_PRODUCT)
    if kind.family == "ivf":
        ivf = faiss.extract_index_ivf(inner)
        ivf.cp.spherical = True  # centroids on the unit sphere, as the vectors are
        if isinstance(inner, faiss.IndexIVFPQ):
            inner.do_polysemous_training = False  # only for Hamming-filtered search, which we do not use: 98 s -> ~5 s
        return inner
    return faiss.IndexIDMap2(inner)


def build_index(
    kind: IndexKind, dim: int, xb: np.ndarray, ids: np.ndarray, trained_empty: faiss.Index | None = None
) -> tuple[faiss.Index, bool, bytes | None]:
    """An index of ``kind`` holding (xb, ids); exact if there are too few vectors to train. "auto" starts exact
    here: index.growth picks and trains its index off the write path once the gallery is large enough.

    ``trained_empty`` (an earlier training of this gallery, still empty) skips training. Returns (index, trained,
    the serialised trained-but-empty index when training ran here, else None) so the caller can keep it.
    """
    fresh = None
    if trained_empty is not None:
        index, trained = trained_empty, True
    elif kind.family == "auto":
        index, trained = exact_index(dim), True
    elif kind.needs_training and len(xb) < kind.min_train_size:
        index, trained = exact_index(dim), False
    else:
        index, trained = empty_index(kind, dim), True
        if kind.needs_training:
            index.train(xb)
            fresh = to_bytes(index)
    if len(xb):
        index.add_with_ids(xb, ids)
    return index, trained, fresh


def set_search_params(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> None:
    """nprobe for IVF, efSearch for HNSW; other indexes ignore them."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(inner.nlist, nprobe or DEFAULT_NPROBE)
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search or DEFAULT_EF_SEARCH


def search(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    threads: int,
    *,
    sel: faiss.IDSelector | None = None,
    nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """D, I for xq; small batches run on one OpenMP thread (a per-thread setting in OpenMP). ``sel`` keeps the
    search to the ids it holds (inside the index: IVF lists skip other ids before computing a distance);
    ``nprobe`` overrides the index's own for this call (IVF only)."""
    faiss.omp_set_num_threads(1 if len(xq) <= SMALL_BATCH else threads)
    params = search_parameters(index, sel, nprobe)
    return index.search(xq, k) if params is None else index.search(xq, k, params=params)


def search_parameters(
    index: faiss.Index, sel: faiss.IDSelector | None, nprobe: int | None
) -> faiss.SearchParameters | None:
    """The per-call parameters faiss takes for this index type (None: the index's own settings)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexIVF):
        if sel is None and nprobe is None:
            return None
        return faiss.SearchParametersIVF(sel=sel, nprobe=min(inner.nlist, nprobe or inner.nprobe))
    if isinstance(inner, faiss.IndexHNSW):
        return None if sel is None else faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
    return None if sel is None else faiss.SearchParameters(sel=sel)


def describe(index: faiss.Index) -> str:
    """The factory string of the index being served ("Flat", "IVF1024,SQ8", ...), read from the index itself."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        return f"IVF{inner.nlist},SQ8"
    if isinstance(inner, faiss.IndexIVFPQ):
        return f"IVF{inner.nlist},PQ{inner.pq.M}x{inner.pq.nbits}"
    if isinstance(inner, faiss.IndexIVF):
        return f"IVF{inner.nlist},Flat"
    if isinstance(inner, faiss.IndexHNSW):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"
    return "Flat"


def bytes_per_vector(index: faiss.Index) -> float:
    """Bytes the index keeps in memory per vector: the code and the id (the coarse quantizer is left out)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return float(getattr(inner, "code_size", 4 * index.d)) + 8.0


def gpu_available() -> bool:
    """faiss built with CUDA (faiss-gpu) and a visible GPU; faiss-cpu has neither."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A GPU copy of a Flat or IVF index (ids kept). GPU indexes cannot remove_ids and are not thread-safe
    even for searches: the gallery uses tombstones and serialises searches for them."""
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def to_bytes(index: faiss.Index) -> bytes:
    if is_on_gpu(index):
        index = faiss.index_gpu_to_cpu(index)
    return faiss.serialize_index(index).tobytes()


def is_on_gpu(index: faiss.Index) -> bool:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return type(inner).__name__.startswith("Gpu")


def from_bytes(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
