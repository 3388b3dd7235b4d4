"""The parity gate: the exported model must compute what its reference computes, on the same pixels.

One gate for native exports and imported networks. Images are decoded and resized by formats.images (as in
training and serving). A native export's reference is the training evaluation path (torchvision ToDtype(scale)
+ Normalize with the checkpoint's mean/std, then APNet.embed), written independently of export.wrap so that a
preprocessing bug in the graph shows up here; an imported network's is the bare network fed its declared
preprocessing computed in numpy (export.import_model.reference_embed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms import v2

from export.config import PARITY_BATCHES, GateTolerances
from export.onnx_export import INPUT_NAME
from formats.images import load_image
from training.data import Sample, read_dataset
from training.evaluate import evaluate_rank

NUM_PARITY_IMAGES = max(PARITY_BATCHES)


class GateError(RuntimeError):
    """The exported model disagrees with PyTorch beyond tolerance; ``report`` holds every figure."""

    def __init__(self, failures: list[str], report: dict[str, Any]):
        super().__init__("parity gate failed: " + "; ".join(failures))
        self.failures = failures
        self.report = report


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    pids: np.ndarray
    camids: np.ndarray


@dataclass
class ParityData:
    """Everything the gates and the INT8 calibration run on, decoded once."""

    root: str
    crops: np.ndarray  # NUM_PARITY_IMAGES gallery crops
    noise: np.ndarray  # NUM_PARITY_IMAGES uniform random images
    query: Split
    gallery: Split
    calibration: np.ndarray  # training images
    counts: dict[str, int] = field(default_factory=dict)


def _spread(samples: list[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples evenly spread over the (sorted) list: every identity and camera is likely kept."""
    if len(samples) <= limit:
        return samples
    idx = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in idx]


def _load(samples: list[Sample], height: int, width: int) -> Split:
    images = np.stack([load_image(s.path, height, width) for s in samples])
    return Split(images, np.array([s.pid for s in samples]), np.array([s.camid for s in samples]))


def load_parity_data(
    data_root: str | Path,
    dataset: str,
    height: int,
    width: int,
    *,
    max_query: int,
    max_gallery: int,
    calibration_images: int,
    seed: int,
) -> ParityData:
    reid = read_dataset(data_root, dataset)
    query = _load(_spread(reid.query, max_query), height, width)
    gallery = _load(_spread(reid.gallery, max_gallery), height, width)
    train = _load(_spread(reid.train, calibration_images), height, width)
    crops = gallery.images[np.resize(np.arange(len(gallery.images)), NUM_PARITY_IMAGES)]
    noise = np.random.default_rng(seed).integers(0, 256, (NUM_PARITY_IMAGES, height, width, 3), dtype=np.uint8)
    counts = {"query": len(query.images), "gallery": len(gallery.images), "calibration": len(train.images)}
    return ParityData(str(reid.root), crops, noise, query, gallery, train.images, counts)


@torch.no_grad()
def torch_embed(
    model: torch.nn.Module,
    images: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    flip_tta: bool,
    batch_size: int = 32,
) -> np.ndarray:
    """The PyTorch eval path: uint8 RGB -> ToDtype(scale) -> Normalize -> APNet.embed (+ flipped) -> L2."""
    if model.training:
        raise ValueError("the reference model must be in eval mode")
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    out = []
    for start in range(0, len(images), batch_size):
        x = transform(torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).contiguous())
        feature = model.embed(x)
        if flip_tta:
            feature = feature + model.embed(torch.flip(x, dims=[3]))
        out.append(F.normalize(feature, dim=1).numpy())
    return np.concatenate(out)


def ort_session(path: Path, threads: int = 0, providers: list[str] | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initialisers are not news
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def ort_embed(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = [
        session.run(None, {INPUT_NAME: images[start : start + batch_size]})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max |diff| and the smallest cosine similarity of matching rows."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {candidate.shape} differs from the reference {reference.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    cosine = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-12)
    return {"max_abs_diff": float(np.abs(ref - cand).max()), "min_cosine": float(cosine.min())}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_metrics(query_features: np.ndarray, gallery_features: np.ndarray, data: ParityData) -> dict[str, float]:
    """rank-1 and mAP (Market-1501 protocol) with cosine distance (rows are L2-normalised here)."""
    distmat = 1.0 - unit(query_features.astype(np.float64)) @ unit(gallery_features.astype(np.float64)).T
    cmc, mean_ap, _ = evaluate_rank(
        distmat, data.query.pids, data.gallery.pids, data.query.camids, data.gallery.camids, max_rank=10
    )
    return {"rank1": float(cmc[0]), "mAP": mean_ap}


Reference = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) RGB -> float32 (N, D): what must be matched


def torch_reference(
    model: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...], flip_tta: bool
) -> Reference:
    """The native export's reference: the PyTorch eval path (``torch_embed``)."""
    return lambda images: torch_embed(model, images, mean, std, flip_tta)


def run_gate(
    reference: Reference,
    onnx_path: Path,
    data: ParityData,
    tol: GateTolerances,
    *,
    reference_name: str,
    unit_length: bool = True,
    threads: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The one fp32 parity gate of native exports and imported networks: ``onnx_path`` (ONNX Runtime, uint8 in)
    against ``reference`` on batches 1/7/16 of crops and of random images, a batch against single runs, and
    rank-1/mAP on the query/gallery split. Returns (report, ONNX Runtime features of crops/random/query/gallery),
    or raises GateError.

    With ``unit_length`` False (an imported network whose output is not normalised) the differences are judged
    relative to the embeddings' size (1e-4 of a norm-30 vector is 3e-3).
    """
    session = ort_session(onnx_path, threads)
    failures: list[str] = []
    report: dict[str, Any] = {
        "reference": reference_name,
        "data_root": data.root,
        "images": data.counts,
        "tolerances": asdict(tol),
    }
    per_batch, batch_vs_single, features = _batch_checks(reference, session, data, tol, unit_length, failures)
    report["fp32"] = per_batch
    report["batch_vs_single_max_abs_diff"] = batch_vs_single
    figures = [f for group in per_batch.values() for f in group.values()]
    report["max_abs_diff"] = max(f["max_abs_diff"] for f in figures)
    report["min_cosine"] = min(f["min_cosine"] for f in figures)

    reference_metrics = retrieval_metrics(
        unit(reference(data.query.images)), unit(reference(data.gallery.images)), data
    )
    features["query"] = ort_embed(session, data.query.images)
    features["gallery"] = ort_embed(session, data.gallery.images)
    onnx_metrics = retrieval_metrics(features["query"], features["gallery"], data)
    deltas = {k: abs(reference_metrics[k] - onnx_metrics[k]) for k in ("rank1", "mAP")}
    report["retrieval"] = {"reference": reference_metrics, "onnx": onnx_metrics, "delta": deltas}
    for k, delta in deltas.items():
        if delta > tol.retrieval_delta:
            failures.append(f"retrieval {k} differs by {delta:.4f} > {tol.retrieval_delta}")

    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise GateError(failures, report)
    return report, features


def _batch_checks(
    reference: Reference,
    session: ort.InferenceSession,
    data: ParityData,
    tol: GateTolerances,
    unit_length: bool,
    failures: list[str],
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float], dict[str, np.ndarray]]:
    """Per batch size figures, batch-vs-single differences and the whole-batch features of crops and random images;
    appends what fails to ``failures``."""
    per_batch: dict[str, dict[str, dict[str, float]]] = {}
    batch_vs_single: dict[str, float] = {}
    features: dict[str, np.ndarray] = {}
    for name, images in (("crops", data.crops), ("random", data.noise)):
        expected = reference(images)
        size = 1.0 if unit_length else max(1.0, float(np.linalg.norm(expected, axis=1).max()))
        max_abs_diff, single_diff = tol.max_abs_diff * size, tol.batch_vs_single * size
        singles = ort_embed(session, images, batch_size=1)
        outputs = {b: singles[:b] if b == 1 else ort_embed(session, images[:b], batch_size=b) for b in PARITY_BATCHES}
        per_batch[name] = {}
        for b, output in outputs.items():
            figures = per_batch[name][str(b)] = compare(expected[:b], output)
            if figures["max_abs_diff"] > max_abs_diff:
                failures.append(f"{name} batch {b}: max |diff| {figures['max_abs_diff']:.2e} > {max_abs_diff:.2e}")
            if figures["min_cosine"] < tol.min_cosine:
                failures.append(f"{name} batch {b}: cosine {figures['min_cosine']:.7f} < {tol.min_cosine}")
        whole = features[name] = outputs[NUM_PARITY_IMAGES]
        batch_vs_single[name] = float(np.abs(whole - singles).max())
        if batch_vs_single[name] > single_diff:
            failures.append(
                f"{name}: batch of {len(images)} vs single runs differ by {batch_vs_single[name]:.2e} > {single_diff:.2e}"
            )
    return per_batch, batch_vs_single, features
