"""A colour-histogram ReID baseline: what colour alone achieves on a data set.

Each image becomes joint HSV histograms over horizontal stripes (head to feet), each stripe L1-normalised;
query and gallery are compared by the Hellinger distance (cosine of square-rooted histograms) or by chi-square,
and scored with the Market-1501 protocol. A trained model must beat this by a wide margin, and on the
synthetic data this must stay low, or the data could be solved by colour alone.

    python -m training.baseline data/synth
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from formats.images import load_image
from training.data import read_dataset
from training.evaluate import evaluate_rank


@dataclass(frozen=True)
class HistogramConfig:
    space: str = "rgb"  # or "hsv"
    bins: tuple[int, int, int] = (4, 4, 4)  # per channel of the colour space
    stripes: int = 6
    height: int = 128  # images are resized to this first, so stripes cover the same body parts
    width: int = 64
    metric: str = "hellinger"  # or "chi2"
    centre: float = 0.08  # Gaussian weight across the width, in widths; 0: every pixel counts the same


def histogram(rgb: np.ndarray, cfg: HistogramConfig) -> np.ndarray:
    """(stripes * prod(bins),) float32: one L1-normalised joint colour histogram per horizontal stripe.

    Pixels count with a Gaussian weight across the width (``centre`` sigmas of the width; 0: flat), since
    the person stands in the middle of a crop and the background fills its sides.
    """
    if cfg.space not in ("hsv", "rgb"):
        raise ValueError(f"unknown colour space {cfg.space!r}; use 'hsv' or 'rgb'")
    rgb = cv2.resize(rgb, (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV) if cfg.space == "hsv" else rgb
    top = np.array([180 if cfg.space == "hsv" else 256, 256, 256])
    bins = np.array(cfg.bins)
    index = np.minimum(pixels.astype(np.int64) * bins // top, bins - 1)  # (H, W, 3) bin per channel
    flat = (index[..., 0] * bins[1] + index[..., 1]) * bins[2] + index[..., 2]  # (H, W) joint bin
    x = (np.arange(cfg.width) + 0.5) / cfg.width - 0.5
    weight = np.exp(-0.5 * (x / cfg.centre) ** 2) if cfg.centre > 0 else np.ones(cfg.width)
    weight = np.broadcast_to(weight, flat.shape)
    edges = np.linspace(0, cfg.height, cfg.stripes + 1).astype(int)
    parts = []
    for y0, y1 in zip(edges[:-1], edges[1:], strict=True):
        hist = np.bincount(flat[y0:y1].ravel(), weights=weight[y0:y1].ravel(), minlength=int(bins.prod()))
        parts.append(hist / max(float(hist.sum()), 1e-12))
    return np.concatenate(parts).astype(np.float32)


def distances(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """(num_query, num_gallery) distances between histogram rows (smaller = more alike)."""
    if metric == "hellinger":
        q, g = np.sqrt(q), np.sqrt(g)
        q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-12
        g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
        return 1.0 - q @ g.T
    if metric == "chi2":
        out = np.empty((len(q), len(g)), np.float32)
        for i, row in enumerate(q):
            out[i] = 0.5 * (((row - g) ** 2) / (row + g + 1e-10)).sum(axis=1)
        return out
    raise ValueError(f"unknown metric {metric!r}; use 'hellinger' or 'chi2'")


def evaluate_histogram(
    data_root: str | Path, cfg: HistogramConfig = HistogramConfig(), dataset: str = "auto"
) -> dict[str, float]:
    """rank1, rank5, rank10, mAP and mINP of the histogram baseline on a data set's query and gallery."""
    data = read_dataset(data_root, dataset)
    q = np.stack([histogram(load_image(s.path), cfg) for s in data.query])
    g = np.stack([histogram(load_image(s.path), cfg) for s in data.gallery])
    q_pids, q_cams = np.array([s.pid for s in data.query]), np.array([s.camid for s in data.query])
    g_pids, g_cams = np.array([s.pid for s in data.gallery]), np.array([s.camid for s in data.gallery])
    cmc, mean_ap, minp = evaluate_rank(distances(q, g, cfg.metric), q_pids, g_pids, q_cams, g_cams, max_rank=10)

    def rank(k: int) -> float:
        return float(cmc[min(k, len(cmc)) - 1])

    return {"rank1": rank(1), "rank5": rank(5), "rank10": rank(10), "mAP": mean_ap, "mINP": minp}


def format_baseline(m: dict[str, float], cfg: HistogramConfig, data_root: str | Path) -> str:
    """One line: the histogram's settings and its scores."""
    setting = f"{cfg.space.upper()} {'x'.join(map(str, cfg.bins))}, {cfg.stripes} stripes, centre {cfg.centre:g}, {cfg.metric}"
    return (
        f"colour histogram ({setting}) on {data_root}: rank-1 {m['rank1']:.1%}  rank-5 {m['rank5']:.1%}  "
        f"rank-10 {m['rank10']:.1%}  mAP {m['mAP']:.1%}  mINP {m['mINP']:.1%}"
    )


if __name__ == "__main__":
    from training.cli import baseline_main

    baseline_main()
