"""Every approximate index type against exact search: recall@10 on 20k x 128 clustered unit vectors."""

import numpy as np
import pytest

from index.gallery import Gallery, Record
from tests.index.vectors import brute_force, clustered

N, DIM, NQ, K = 20_000, 128, 200, 10
MODEL = "recall"


@pytest.fixture(scope="module")
def data():
    x = clustered(N + NQ, DIM, clusters=500, spread=0.6, seed=42)
    xb, xq = x[:N], x[N:]
    _, truth = brute_force(xb, np.arange(1, N + 1), xq, K)  # gallery ids start at 1
    return xb, xq, truth


# (factory, settings, minimum recall@10). Thresholds sit a few points under what these settings reach on
# this data, so a broken training step, id mapping or search parameter fails them.
CASES = [
    ("Flat", {}, 1.0),
    ("IVF64,Flat", {"nprobe": 16}, 0.95),
    ("IVF64,PQ32x4", {"nprobe": 16}, 0.35),  # 16 bytes a vector, no re-ranking: reaches ~0.42 here
    ("HNSW32", {"ef_search": 64}, 0.95),
]


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "settings", "minimum"), CASES)
def test_recall_at_10_against_exact(tmp_path, data, factory, settings, minimum):
    xb, xq, truth = data
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory=factory, **settings) as g:
        g.add(xb, [Record() for _ in range(N)], model_id=MODEL)
        assert g.stats()["trained"]
        hits = g.search(xq, K, model_id=MODEL)
    found = np.array([[h.id for h in row] + [-1] * (K - len(row)) for row in hits])
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
    print(f"{factory} {settings}: recall@10 = {recall:.3f}")
    assert recall >= minimum
