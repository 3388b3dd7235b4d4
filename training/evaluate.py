"""Retrieval evaluation with the Market-1501 protocol: CMC, mAP, mINP.

For each query, gallery images of the same person seen by the same camera are ignored (they are too
easy), and queries with no remaining match are skipped, as torchreid and fast-reid do.
"""

from __future__ import annotations

import numpy as np


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk: int = 512,
) -> tuple[np.ndarray, float, float]:
    """(cmc[max_rank], mAP, mINP) of a (num_query, num_gallery) distance matrix (smaller = more similar).

    Vectorised over queries, ``chunk`` query rows at a time to bound memory on large galleries.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids, q_camids, g_camids = (np.asarray(a) for a in (q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = distmat.shape
    if (len(q_pids), len(g_pids)) != (num_q, num_g) or len(q_camids) != num_q or len(g_camids) != num_g:
        raise ValueError(f"distmat {distmat.shape} does not match the id and camera arrays")
    max_rank = min(max_rank, num_g)
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    for start in range(0, num_q, chunk):
        rows = slice(start, start + chunk)
        order = np.argsort(distmat[rows], axis=1, kind="stable")
        same_pid = g_pids[order] == q_pids[rows, None]
        keep = ~(same_pid & (g_camids[order] == q_camids[rows, None]))
        hits = same_pid & keep
        rank = np.cumsum(keep, axis=1) - 1  # 0-based rank among the kept gallery images
        num_rel = hits.sum(axis=1)
        valid = num_rel > 0
        if not valid.any():
            continue
        hits, rank, num_rel = hits[valid], rank[valid], num_rel[valid]
        first_rank = np.where(hits, rank, num_g).min(axis=1)
        cmc_sum += (first_rank[:, None] <= np.arange(max_rank)[None, :]).sum(axis=0)
        precision = np.cumsum(hits, axis=1) / np.maximum(rank + 1, 1)  # rank is -1 before the first kept image
        ap_sum += ((precision * hits).sum(axis=1) / num_rel).sum()
        last_rank = np.where(hits, rank, -1).max(axis=1)
        inp_sum += (num_rel / (last_rank + 1)).sum()
        num_valid += int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a match in the gallery from another camera")
    return (cmc_sum / num_valid).astype(np.float32), float(ap_sum / num_valid), float(inp_sum / num_valid)
