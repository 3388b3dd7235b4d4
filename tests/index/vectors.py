"""Synthetic unit vectors for the index tests: clustered like embeddings of people seen several times."""

import numpy as np


def clustered(n: int, dim: int, *, clusters: int = 200, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """n unit vectors around ``clusters`` random centres (float32, row-normalised)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product in numpy: the oracle every index is checked against (D, I)."""
    scores = xq @ xb.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]
