"""Pictures of a checkpoint on a data set: ranked lists, and Grad-CAM attention maps per pyramid level.

    python -m training.viz CHECKPOINT --data DIR --out runs/viz [--num 6] [--top 10]

``ranked.png`` (as torchreid's ranked-result pictures): one row per query (grey frame) with its top-k gallery
crops and their cosine similarities, green when the same person, red when not; same-camera crops of the query's
person are left out, as the Market-1501 protocol does. The first rows are queries whose rank-1 is right, the last
rows queries whose rank-1 is wrong.

``attention.png`` (as Figure 2 of the APNet paper): for each query, Grad-CAM of the cosine similarity between the
query and its best gallery match, taken at the output of every attention block of the pyramid (finest level
first) after layer3 and after layer4, then the match. Grad-CAM comes from the pytorch-grad-cam library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader

from formats.images import load_image
from training.checkpoint import load_checkpoint
from training.data import ImageDataset, eval_transform, read_dataset
from training.evaluate import extract_features, l2_normalize
from training.model import APNet, SAMSAttention

PLACES = (3, 4)  # pyramid places after layer3 and layer4: where the paper's maps are legible
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
GOOD, BAD, QUERY = "#1a9641", "#d7191c", "#7f7f7f"  # frame colours: same person, another person, the query
DISPLAY = (128, 64)  # height, width of a crop in the pictures


class CosineTarget:
    """Grad-CAM target: the cosine similarity between the model's embedding of the image and ``feature``."""

    def __init__(self, feature: torch.Tensor):
        self.feature = feature

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(embedding, self.feature, dim=0)


def pyramid_layers(model: APNet, places: tuple[int, ...] = PLACES) -> list[tuple[str, nn.Module]]:
    """(label, module) of every attention block at ``places``, finest level first; at level 0, the stage."""
    layers = []
    for p in places:
        blocks = list(model.pyramid[p])
        if not blocks:
            layers.append((STAGE_NAMES[p], model.stages[p]))
        level = len(blocks)
        for block in blocks:
            kind = f"SAMS r={block.splits}" if isinstance(block, SAMSAttention) else "SE"
            layers.append((f"{STAGE_NAMES[p]} L{level} {kind}", block))
            level -= 1
    return layers


def grad_cam(
    model: APNet, image: torch.Tensor, target: torch.Tensor, layers: list[nn.Module] | None = None
) -> list[np.ndarray]:
    """Grad-CAM maps (H, W) in [0, 1] of ``cosine(embed(image), target)``, one per layer (default: the pyramid's
    blocks at PLACES), each computed on its own, not averaged."""
    from pytorch_grad_cam import GradCAM

    model.eval()
    maps = []
    for layer in layers if layers is not None else [m for _, m in pyramid_layers(model)]:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            maps.append(cam(input_tensor=image, targets=[CosineTarget(target)])[0])
    return maps


@dataclass
class Ranking:
    query: int
    gallery: list[int]  # top-k gallery indices, best first
    scores: list[float]
    correct: list[bool]


def rank(qf, gf, q_pids, g_pids, q_camids, g_camids, top: int) -> list[Ranking]:
    """Top-k gallery of every query by cosine similarity, the query person's same-camera crops left out."""
    sim = l2_normalize(qf) @ l2_normalize(gf).T
    sim[(q_pids[:, None] == g_pids[None]) & (q_camids[:, None] == g_camids[None])] = -np.inf
    order = np.argsort(-sim, axis=1)[:, :top]
    return [
        Ranking(i, order[i].tolist(), sim[i, order[i]].tolist(), (g_pids[order[i]] == q_pids[i]).tolist())
        for i in range(len(qf))
    ]


def pick(rankings: list[Ranking], num: int) -> list[Ranking]:
    """About half queries with a right rank-1 and half with a wrong one, spread over the query set."""
    right = [r for r in rankings if r.correct[0]]
    wrong = [r for r in rankings if not r.correct[0]]
    n_wrong = min(len(wrong), num // 2)
    n_right = min(len(right), num - n_wrong)
    n_wrong = min(len(wrong), num - n_right)

    def spread(items: list[Ranking], n: int) -> list[Ranking]:
        return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)] if n else []

    return spread(right, n_right) + spread(wrong, n_wrong)


def _crop(path: str) -> np.ndarray:
    return load_image(path, *DISPLAY)


def _framed(ax, rgb: np.ndarray, colour: str, title: str = "") -> None:
    ax.imshow(rgb)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    if title:
        ax.set_title(title, fontsize=7, color=colour)


def _figure(rows: int, cols: int, scale: float = 0.75):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * scale * 2.1 + 0.3), squeeze=False)
    return plt, fig, axes


def draw_ranked(rankings: list[Ranking], query_paths, gallery_paths, path: Path) -> Path:
    top = max(len(r.gallery) for r in rankings)
    plt, fig, axes = _figure(len(rankings), top + 1)
    for row, r in zip(axes, rankings, strict=True):
        _framed(row[0], _crop(query_paths[r.query]), QUERY, "query")
        for ax in row[1:]:
            ax.axis("off")
        for k, (g, score, ok) in enumerate(zip(r.gallery, r.scores, r.correct, strict=True), start=1):
            row[k].axis("on")
            _framed(row[k], _crop(gallery_paths[g]), GOOD if ok else BAD, f"{k}: {score:.2f}")
    fig.suptitle("ranked lists: green same person, red another (cosine similarity)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_attention(
    model: APNet, rankings: list[Ranking], queries, gallery_paths, gf: np.ndarray, size: tuple[int, int], path: Path
) -> Path:
    """``queries``: the data set's query samples (rankings index them); ``gf``: L2-normalised gallery features."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    labels, layers = zip(*pyramid_layers(model), strict=True)
    plt, fig, axes = _figure(len(rankings), len(layers) + 2, scale=0.9)
    for row, r in zip(axes, rankings, strict=True):
        image = ImageDataset([queries[r.query]], *size, eval_transform())[0][0][None]
        maps = grad_cam(model, image, torch.from_numpy(gf[r.gallery[0]]), list(layers))
        pixels = load_image(queries[r.query].path, *size)
        _framed(row[0], pixels, QUERY, "query")
        rgb = pixels.astype(np.float32) / 255.0
        for ax, cam, label in zip(row[1:-1], maps, labels, strict=True):
            _framed(ax, show_cam_on_image(rgb, cam, use_rgb=True), QUERY, label.replace(" ", "\n", 1))
        ok = r.correct[0]
        _framed(
            row[-1], load_image(gallery_paths[r.gallery[0]], *size), GOOD if ok else BAD, f"match {r.scores[0]:.2f}"
        )
    fig.suptitle("Grad-CAM of the similarity to the best match, per pyramid level", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def visualise(
    checkpoint: str | Path, data_root: str | Path, out_dir: str | Path, num: int = 6, top: int = 10
) -> list[Path]:
    """Write ranked.png and attention.png for ``num`` queries (half right at rank 1, half wrong where there are
    such); returns their paths."""
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    size = (meta["data"]["height"], meta["data"]["width"])
    data = read_dataset(data_root)
    features = {}
    for split, samples in (("query", data.query), ("gallery", data.gallery)):
        loader = DataLoader(ImageDataset(samples, *size, eval_transform()), batch_size=64)
        with torch.no_grad():
            features[split] = extract_features(model, loader)  # with flip-TTA, as the served model
    (qf, q_pids, q_camids), (gf, g_pids, g_camids) = features["query"], features["gallery"]
    chosen = pick(rank(qf, gf, q_pids, g_pids, q_camids, g_camids, top), num)
    q_paths, g_paths = [s.path for s in data.query], [s.path for s in data.gallery]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        draw_ranked(chosen, q_paths, g_paths, out_dir / "ranked.png"),
        draw_attention(model, chosen, data.query, g_paths, l2_normalize(gf), size, out_dir / "attention.png"),
    ]


if __name__ == "__main__":
    from training.cli import viz_main

    viz_main()
