"""Grad-CAM attention maps of APNet on a few queries (as the paper visualises its pyramid).

For each query, the target is the cosine similarity between its embedding and its best cross-camera gallery
match; Grad-CAM weights the feature maps after the last two attention places by their gradients. Each output
PNG shows: query | Grad-CAM after stage 3 | Grad-CAM after stage 4 | the gallery match (green: same person).

    python -m training.viz CHECKPOINT --data DIR --out runs/viz --num 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader

from formats.images import load_image
from training.checkpoint import load_checkpoint
from training.data import ImageDataset, eval_transform, read_dataset
from training.evaluate import extract_features, l2_normalize
from training.model import APNet

PLACES = (3, 4)  # pyramid places after layer3 and layer4


def grad_cam(
    model: APNet, image: torch.Tensor, target: torch.Tensor, places: tuple[int, ...] = PLACES
) -> list[np.ndarray]:
    """Grad-CAM maps (H, W) in [0, 1] of ``cosine(embed(image), target)`` at the given pyramid places."""
    model.eval()
    activations: dict[int, torch.Tensor] = {}

    def keep(place: int):
        def hook(module, inputs, output):
            output.retain_grad()
            activations[place] = output

        return hook

    handles = [model.pyramid[p].register_forward_hook(keep(p)) for p in places]
    try:
        model.zero_grad(set_to_none=True)
        score = F.cosine_similarity(model.embed(image), target[None], dim=1).sum()
        score.backward()
    finally:
        for handle in handles:
            handle.remove()
    maps = []
    for p in places:
        act, grad = activations[p], activations[p].grad
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=image.shape[2:], mode="bilinear", align_corners=False)[0, 0]
        cam = cam - cam.min()
        maps.append((cam / cam.max().clamp_min(1e-12)).detach().cpu().numpy())
    return maps


def overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8(0.5 * rgb + 0.5 * heat)


def visualise(checkpoint: str | Path, data_root: str | Path, out_dir: str | Path, num: int = 8) -> list[Path]:
    """Write one PNG per query (``num`` queries spread over the query set); returns their paths."""
    model, meta = load_checkpoint(checkpoint)
    height, width = meta["data"]["height"], meta["data"]["width"]
    data = read_dataset(data_root)
    queries = data.query[:: max(1, len(data.query) // num)][:num]
    gallery_loader = DataLoader(ImageDataset(data.gallery, height, width, eval_transform()), batch_size=64)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, flip=False)
    gf = l2_normalize(gf)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in queries:
        image = ImageDataset([sample], height, width, eval_transform())[0][0][None]
        with torch.no_grad():
            qf = l2_normalize(model.embed(image).numpy())[0]
        same_camera_match = (g_pids == sample.pid) & (g_camids == sample.camid)  # not a retrieval target
        scores = np.where(same_camera_match, -np.inf, gf @ qf)
        best = int(np.argmax(scores))
        maps = grad_cam(model, image, torch.from_numpy(gf[best]))
        rgb = load_image(sample.path, height, width)
        match = load_image(data.gallery[best].path, height, width).copy()
        colour = (0, 200, 0) if g_pids[best] == sample.pid else (220, 0, 0)
        cv2.rectangle(match, (0, 0), (width - 1, height - 1), colour, 2)
        panel = np.hstack([rgb, *(overlay(rgb, m) for m in maps), match])
        path = out_dir / f"{Path(sample.path).stem}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(panel[:, :, ::-1]))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Grad-CAM attention maps of an APNet checkpoint on a few queries.")
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="data root in the Market-1501 layout")
    parser.add_argument("--out", default="runs/viz")
    parser.add_argument("--num", type=int, default=8, help="number of queries")
    args = parser.parse_args(argv)
    paths = visualise(args.checkpoint, args.data, args.out, args.num)
    print(f"wrote {len(paths)} attention maps to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
