"""Retrieval evaluation with the Market-1501 protocol: CMC, mAP, mINP.

For each query, gallery images of the same person seen by the same camera are ignored (they are too
easy), and queries with no remaining match are skipped, as torchreid and fast-reid do. Also: feature
extraction with flip-TTA, k-reciprocal re-ranking, an ROC summary, a pair-level threshold, and the open-set
calibration of the server's verdict (index.calibration: identities split into enrolled and absent folds, scored
with the server's identity aggregation; operating points at FAR 0.1, 0.01 and 0.001 and a DIR-vs-FAR curve).

Two galleries (``PROTOCOLS``), both reported: "standard" keeps the distractors (person 0) as negatives, as the
data sets' own evaluation code, torchreid and fast-reid do; "apnet" drops them, as the APNet authors' Market-1501
reader does (their DukeMTMC-reID and MSMT17 readers keep every gallery image), which removes hard negatives and
raises rank-1 and mAP. On a gallery without person 0 the two agree.

    python -m training.evaluate CHECKPOINT --data DIR [--protocol standard|apnet] [--rerank] [--write-meta]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from index.calibration import FARS, calibration, dir_far_curve, split_scores
from training.data import ImageDataset, ReIDDataset, eval_transform

PROTOCOLS = ("standard", "apnet")
OPEN_SET_FOLDS = 5  # each fold of identities absent once: the gallery holds 4/5 of them, as a typical deployment
OPEN_SET_SEED = 0


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


@torch.no_grad()
def extract_features(
    model: torch.nn.Module, loader: DataLoader, device: str | torch.device = "cpu", flip: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-BNNeck embeddings (N, D), pids (N,) and camids (N,) of a loader; flip-TTA adds the mirrored image's feature."""
    model.eval()
    feats, pids, camids = [], [], []
    for images, pid, camid in loader:
        images = images.to(device)
        feature = model(images)
        if flip:
            feature = feature + model(images.flip(dims=[3]))
        feats.append(feature.float().cpu())
        pids.append(np.asarray(pid))
        camids.append(np.asarray(camid))
    return torch.cat(feats).numpy(), np.concatenate(pids), np.concatenate(camids)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pairwise_distance(xq: np.ndarray, xb: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """ "cosine": 1 - cosine similarity; "euclidean": squared euclidean distance of the raw features."""
    if metric == "cosine":
        return 1.0 - l2_normalize(xq) @ l2_normalize(xb).T
    if metric == "euclidean":
        sq = (xq**2).sum(1)[:, None] + (xb**2).sum(1)[None, :] - 2.0 * xq @ xb.T
        return np.maximum(sq, 0.0)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def re_rank(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017): a Jaccard distance of k-reciprocal neighbour sets.

    Takes the query-gallery, query-query and gallery-gallery distances, returns the new (num_q, num_g)
    distance: (1 - lambda) * Jaccard + lambda * original. Dense O(N^2) memory over all N images.
    """
    num_q = q_g.shape[0]
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32) ** 2
    dist = (dist / np.maximum(dist.max(axis=0, keepdims=True), 1e-12)).T
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        return forward[(rank[forward, : k + 1] == i).any(axis=1)]

    weights = np.zeros((n, n), dtype=np.float32)
    half = int(np.around(k1 / 2))
    for i in range(n):
        neighbours = reciprocal(i, k1)
        expanded = [neighbours]
        for candidate in neighbours:
            theirs = reciprocal(candidate, half)
            if len(np.intersect1d(theirs, neighbours)) > 2 / 3 * len(theirs):
                expanded.append(theirs)
        expanded = np.unique(np.concatenate(expanded))
        w = np.exp(-dist[i, expanded])
        weights[i, expanded] = w / w.sum()
    if k2 > 1:  # local query expansion: average the weight vectors of the k2 nearest neighbours
        weights = np.stack([weights[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.empty((num_q, n), dtype=np.float32)
    for i in range(num_q):
        nonzero = np.flatnonzero(weights[i])
        overlap = np.minimum(weights[i, nonzero][None, :], weights[:, nonzero]).sum(axis=1)
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)
    final = (1 - lambda_value) * jaccard + lambda_value * dist[:num_q]
    return final[:, num_q:]


def _pair_scores(sim, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of the same-person and different-person query-gallery pairs (same-camera matches ignored)."""
    same = q_pids[:, None] == g_pids[None, :]
    ignored = same & (q_camids[:, None] == g_camids[None, :])
    return sim[same & ~ignored], sim[~same]


def threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """The lowest score s with mean(negatives >= s) <= fpr: "similarity >= s is a match" at that false-positive rate."""
    if negatives.size == 0:
        raise ValueError("no negative pairs to calibrate a threshold on")
    ordered = np.sort(negatives)[::-1]
    allowed = int(np.floor(fpr * ordered.size))
    if allowed >= ordered.size:
        return float(ordered[-1])
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


def roc_summary(
    sim: np.ndarray, q_pids, g_pids, q_camids, g_camids, fprs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
) -> dict[str, dict[str, float]]:
    """For each target FPR: the similarity threshold and the true-positive rate over query-gallery pairs."""
    positives, negatives = _pair_scores(sim, *map(np.asarray, (q_pids, g_pids, q_camids, g_camids)))
    summary = {}
    for fpr in fprs:
        score = threshold_at_fpr(negatives, fpr)
        summary[f"{fpr:g}"] = {
            "score": score,
            "tpr": float((positives >= score).mean()) if positives.size else 0.0,
            "fpr": float((negatives >= score).mean()),
        }
    return summary


@dataclass
class EvalResult:
    metrics: dict[str, float]  # rank1, rank5, rank10, mAP, mINP
    roc: dict[str, dict[str, float]]
    threshold: dict[str, float]  # {"score": cosine similarity, "fpr": target}
    protocol: str = "standard"  # the gallery of metrics, roc and threshold
    by_protocol: dict[str, dict[str, float]] = field(default_factory=dict)  # every protocol's metrics + "gallery" size
    calibration: dict | None = None  # formats.spec.Calibration as JSON: the verdict's operating points (open set)
    dir_far: dict[str, list[float]] | None = None  # the DIR-vs-FAR curve: "far", "dir", "threshold"


def open_set(qf: np.ndarray, gf: np.ndarray, q_pids, g_pids, *, dataset: str = "") -> tuple[dict | None, dict | None]:
    """(calibration, DIR-vs-FAR curve) of L2-normalised features, as the server scores them: person 0
    (distractors) stays in the gallery without an identity. (None, None) with fewer than two identities."""
    labels = [None if int(p) == 0 else str(int(p)) for p in np.asarray(g_pids)]
    queries = [str(int(p)) for p in np.asarray(q_pids)]
    identities = len({*queries, *(label for label in labels if label is not None)})
    if identities < 2:
        return None, None
    folds = min(OPEN_SET_FOLDS, identities)
    scores = split_scores(l2_normalize(qf), queries, l2_normalize(gf), labels, folds=folds, seed=OPEN_SET_SEED)
    result = calibration(
        scores, FARS, source="artifact", method="identity-split", dataset=dataset, seed=OPEN_SET_SEED
    ).model_dump(mode="json")
    far, dir_, threshold = dir_far_curve(scores)
    return result, {"far": far.tolist(), "dir": dir_.tolist(), "threshold": threshold.tolist()}


def dir_at(result: EvalResult, far: float) -> tuple[float, float] | None:
    """(DIR, threshold) of the operating point calibrated for ``far``, if there is one."""
    points = (result.calibration or {}).get("operating_points", [])
    point = next((p for p in points if np.isclose(p["target_far"], far)), None)
    return None if point is None else (point["dir"], point["threshold"])


def format_open_set(result: EvalResult) -> str:
    """Rank-1 and mAP beside the open-set DIR at FAR 1 % and 10 % (the verdict's trade-off)."""
    cal = result.calibration
    if cal is None:
        return "open set: not measured"
    parts = [f"rank1 {result.metrics['rank1']:.4f}", f"mAP {result.metrics['mAP']:.4f}"]
    for far in (0.01, 0.1):
        found = dir_at(result, far)
        if found is not None:
            parts.append(f"DIR@FAR{far:.0%} {found[0]:.4f} (threshold {found[1]:.4f})")
    head = f"open set ({result.protocol}, {cal['gallery_identities']} identities enrolled per fold)"
    return f"{head}  " + "  ".join(parts)


def plot_dir_far(result: EvalResult, path: str | Path) -> Path:
    """The DIR-vs-FAR curve as a PNG, with the calibrated operating points marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    path = Path(path)
    curve, cal = result.dir_far or {}, result.calibration or {}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    far = np.asarray(curve.get("far", []))
    keep = far > 0  # a log axis has no room for FAR 0
    ax.plot(far[keep], np.asarray(curve.get("dir", []))[keep], lw=1.5, label="DIR")
    for p in cal.get("operating_points", []):
        if p["far"] > 0:  # hollow: too few absent identities to estimate that rate (index.calibration)
            face = "C3" if p["reliable"] else "none"
            ax.plot(p["far"], p["dir"], "o", color="C3", markerfacecolor=face)
            ax.annotate(f"FAR {p['target_far']:g}: t={p['threshold']:.3f}", (p["far"], p["dir"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("false-alarm rate (absent-identity probes)")
    ax.set_ylabel("detection and identification rate")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"open set, {cal.get('gallery_identities', '?')} enrolled identities ({result.protocol})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_features(
    qf: np.ndarray,
    gf: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    metric: str = "cosine",
    rerank: bool = False,
    threshold_fpr: float = 1e-3,
) -> EvalResult:
    distmat = pairwise_distance(qf, gf, metric)
    if rerank:
        distmat = re_rank(distmat, pairwise_distance(qf, qf, metric), pairwise_distance(gf, gf, metric))
    cmc, mean_ap, minp = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    metrics = {f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in (1, 5, 10)}
    metrics |= {"mAP": mean_ap, "mINP": minp}
    # The server compares cosine similarities of L2-normalised embeddings, so the ROC uses them too.
    sim = l2_normalize(qf) @ l2_normalize(gf).T
    fprs = tuple(sorted({1e-4, 1e-3, 1e-2, threshold_fpr}))
    roc = roc_summary(sim, q_pids, g_pids, q_camids, g_camids, fprs)
    threshold = {"score": roc[f"{threshold_fpr:g}"]["score"], "fpr": threshold_fpr}
    return EvalResult(metrics=metrics, roc=roc, threshold=threshold)


def protocol_gallery(g_pids: np.ndarray, protocol: str) -> np.ndarray:
    """Boolean mask of the gallery images a protocol keeps (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    g_pids = np.asarray(g_pids)
    return g_pids != 0 if protocol == "apnet" else np.ones(len(g_pids), dtype=bool)


def evaluate_protocols(
    qf: np.ndarray,
    gf: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    protocol: str = "standard",
    dataset: str = "",
    **options,
) -> EvalResult:
    """``evaluate_features`` (``options``: metric, rerank, threshold_fpr) on the gallery of ``protocol``, with
    every protocol's metrics in ``by_protocol``; a protocol that keeps the same images is not computed twice."""
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    protocol_gallery(g_pids, protocol)  # validates the name before any work
    results: dict[str, EvalResult] = {}
    galleries: dict[str, int] = {}
    for name in PROTOCOLS:
        keep = protocol_gallery(g_pids, name)
        twin = next((n for n in results if np.array_equal(protocol_gallery(g_pids, n), keep)), None)
        if twin is not None:
            results[name] = results[twin]
        else:
            results[name] = evaluate_features(qf, gf[keep], q_pids, g_pids[keep], q_camids, g_camids[keep], **options)
        galleries[name] = int(keep.sum())
    by_protocol = {name: r.metrics | {"gallery": galleries[name]} for name, r in results.items()}
    keep = protocol_gallery(g_pids, protocol)
    cal, curve = open_set(qf, gf[keep], q_pids, g_pids[keep], dataset=dataset)
    return replace(results[protocol], protocol=protocol, by_protocol=by_protocol, calibration=cal, dir_far=curve)


def evaluate_model(
    model: torch.nn.Module,
    data: ReIDDataset,
    height: int,
    width: int,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    num_workers: int = 0,
    flip: bool = True,
    metric: str = "cosine",
    rerank: bool = False,
    threshold_fpr: float = 1e-3,
    protocol: str = "standard",
) -> EvalResult:
    def loader(samples):
        return DataLoader(ImageDataset(samples, height, width, eval_transform()), batch_size, num_workers=num_workers)

    qf, q_pids, q_camids = extract_features(model, loader(data.query), device, flip)
    gf, g_pids, g_camids = extract_features(model, loader(data.gallery), device, flip)
    return evaluate_protocols(
        qf,
        gf,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        protocol,
        dataset=data.name,
        metric=metric,
        rerank=rerank,
        threshold_fpr=threshold_fpr,
    )


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def format_protocols(result: EvalResult) -> str:
    """One line per protocol, the one that result.metrics holds marked with a star."""
    lines = []
    for name, row in result.by_protocol.items():
        metrics = {k: v for k, v in row.items() if k != "gallery"}
        star = "*" if name == result.protocol else " "
        lines.append(f"{name + star:<9} ({row['gallery']} gallery images)  {format_metrics(metrics)}")
    return "\n".join(lines)


def format_report(result: EvalResult) -> str:
    """Every protocol's metrics, the ROC thresholds, the open-set summary and each calibrated operating point."""
    lines = [format_protocols(result)]
    for target, row in result.roc.items():
        lines.append(f"FPR {target}: TPR {row['tpr']:.4f} at cosine similarity >= {row['score']:.4f}")
    lines.append(format_open_set(result))
    for p in (result.calibration or {}).get("operating_points", []):
        caveat = "" if p["reliable"] else f" (only {p['absent_identities']} absent identities: a rough estimate)"
        lines.append(
            f"FAR {p['target_far']:g}: DIR {p['dir']:.4f} at identity score >= {p['threshold']:.4f}, "
            f"measured FAR {p['far']:.4f}{caveat}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from training.cli import evaluate_main

    evaluate_main()
