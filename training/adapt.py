"""Adapt a checkpoint to one's own cameras from their tracks, without labels.

    python -m training.adapt --gallery galleries/cam1 --checkpoint checkpoints/demo --out checkpoints/cam1 \
        [--time-from 2026-12-01T00:00:00Z] [--time-to 2026-12-08T00:00:00Z]

The command line (training.cli) has the gallery side write the window's tracked crops into a folder (``python -m
ingestion.track_dataset``, a child process: training never imports the gallery) and calls ``adapt`` on it.
Each track is a pseudo-identity (training.adapt_data); tracks seen at overlapping times on one camera are sure
negatives; optionally, tracks whose mean embeddings are close and that no sure negative keeps apart are merged
(complete-linkage clustering, scikit-learn). The model is then fine-tuned as it was trained (P x K batches of
pseudo-identities, label-smoothed cross-entropy + batch-hard triplet, Adam; training.train's step and
training.batches' in-memory augmentation) with a new classifier over the pseudo-identities, initialised with
their mean embeddings. The new checkpoint's meta.json says what it was adapted on ("adaptation": the gallery, the
window, the counts, the losses) and, given a labelled evaluation set (e.g. the synthetic one), what the
adaptation gave up on it: its metrics before and after.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.adapt_data import (
    Requirements,
    TogetherSampler,
    label_negatives,
    merge_tracks,
    read_track_set,
    sure_negatives,
    usable_tracks,
)
from training.batches import BatchAugment, CachedBatches, decode_all
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import PKBatchSampler, Sample, read_dataset
from training.evaluate import EvalResult, evaluate_model
from training.losses import ReIDLoss
from training.model import APNet, APNetConfig
from training.train import Runtime, Trainee, train_step

__all__ = ["AdaptConfig", "adapt", "embed_images"]
logger = logging.getLogger(__name__)


@dataclass
class AdaptConfig:
    steps: int = 100  # optimisation steps (P x K batches)
    lr: float = 1e-3
    weight_decay: float = 5e-4
    ids_per_batch: int = 8  # P pseudo-identities a batch
    images_per_id: int = 4  # K crops of each
    merge_threshold: float = 0.0  # cosine distance under which tracks are merged into one person; 0: never
    batches: str = "together"  # "together": P identities around a moment, sure negatives first; "random"
    freeze_stages: int = 0  # backbone stages kept as they are (0: none; 1: the stem; 2: the stem and layer1)
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    flip_prob: float = 0.5
    pad: int = 4
    erase_prob: float = 0.5
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: torch's default
    device: str = "cpu"
    requirements: Requirements = field(default_factory=Requirements)


@torch.no_grad()
def embed_images(model: APNet, images: torch.Tensor, device: torch.device, batch: int = 256) -> np.ndarray:
    """Post-BNNeck embeddings (N, D) of uint8 (N, 3, H, W) crops, normalised as in training, no flip."""
    from training.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    model.eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    out = [
        model((images[i : i + batch].to(device).float() / 255.0 - mean) / std).cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy()


def _track_means(features: np.ndarray, track_of: np.ndarray, n_tracks: int) -> np.ndarray:
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    means = np.zeros((n_tracks, x.shape[1]), np.float32)
    np.add.at(means, track_of, x)
    return means / np.bincount(track_of, minlength=n_tracks)[:, None]


def _new_model(base: APNet, centroids: np.ndarray, freeze_stages: int) -> APNet:
    """The base model with a classifier over the pseudo-identities, its rows their unit mean embeddings."""
    cfg = APNetConfig(**{**asdict(base.cfg), "num_classes": len(centroids)})
    model = APNet(cfg)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=False)
    weight = torch.from_numpy(centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12))
    model.classifier.weight.data.copy_(weight.float())
    for stage in list(model.stages)[:freeze_stages]:
        stage.requires_grad_(False)
    for place in list(model.pyramid)[:freeze_stages]:
        place.requires_grad_(False)
    return model


def _fine_tune(
    model: APNet, images: torch.Tensor, labels: np.ndarray, negatives: np.ndarray, cfg: AdaptConfig, rt: Runtime
) -> list[dict]:
    """cfg.steps P x K steps; returns the mean loss parts of each tenth of the run. ``negatives``: (L, L) sure
    negatives between pseudo-identities."""
    n_labels = int(labels.max()) + 1
    samples = [Sample("", int(label), 0) for label in labels]
    p = min(cfg.ids_per_batch, n_labels)
    if cfg.batches == "together":
        sampler = TogetherSampler(labels.tolist(), negatives, p, cfg.images_per_id, cfg.seed)
    elif cfg.batches == "random":
        sampler = PKBatchSampler(labels.tolist(), p, cfg.images_per_id, cfg.seed)
    else:
        raise ValueError(f"batches must be 'together' or 'random', got {cfg.batches!r}")
    generator = torch.Generator().manual_seed(cfg.seed)
    augment = BatchAugment(cfg.flip_prob, cfg.pad, cfg.erase_prob)
    batches = CachedBatches(images, samples, sampler, augment, generator, rt.device)
    loss_fn = ReIDLoss(n_labels, model.feature_dim, cfg.label_smoothing, cfg.triplet_margin, gather=False)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = True if rt.device.type == "cpu" else None
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    t = Trainee(model, loss_fn.to(rt.device), optimizer, None, torch.amp.GradScaler(rt.device.type, enabled=False))
    model.train()
    history, window, step, epoch = [], [], 0, 0
    every = max(1, cfg.steps // 10)
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        for batch, pids, _ in batches:
            window.append(train_step(model, t, batch, pids.to(rt.device), rt))
            step += 1
            if len(window) == every or step == cfg.steps:
                history.append(
                    {k: round(float(np.mean([w[k] for w in window])), 4) for k in window[0]} | {"step": step}
                )
                logger.info("step %d/%d loss %.4f acc %.3f", step, cfg.steps, history[-1]["loss"], history[-1]["acc"])
                window = []
            if step == cfg.steps:
                break
        epoch += 1
    return history


def _evaluate(model: APNet, meta: dict, data_root: str | Path, device: torch.device) -> EvalResult:
    data = read_dataset(data_root)
    h, w = meta["data"]["height"], meta["data"]["width"]
    flip = (meta.get("train") or {}).get("flip_tta", True)
    return evaluate_model(model, data, h, w, device=device, batch_size=256, flip=flip)


def adapt(
    checkpoint: str | Path,
    track_set: str | Path,
    out: str | Path,
    cfg: AdaptConfig | None = None,
    *,
    source: dict[str, Any] | None = None,
    time_from: float | None = None,
    time_to: float | None = None,
    eval_data: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` on the tracks of ``track_set`` captured in [time_from, time_to] and write the new
    checkpoint folder ``out``; returns its "adaptation" entry. NotEnoughData when the window holds too little.
    ``source`` (e.g. the gallery's URI) is recorded as given; ``eval_data`` (a labelled data set) is evaluated
    before and after."""
    cfg = cfg or AdaptConfig()
    started = time.time()
    crops = read_track_set(track_set, time_from, time_to)
    tracks = list(usable_tracks(crops, cfg.requirements).values())
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    rt = Runtime(0, 1, device, amp=False)
    base, meta = load_checkpoint(checkpoint, map_location=device)
    h, w = meta["data"]["height"], meta["data"]["width"]
    flat = [c for track in tracks for c in track]
    track_of = np.array([i for i, track in enumerate(tracks) for _ in track])
    images = decode_all([Sample(c.path, 0, 0) for c in flat], h, w)
    negatives = sure_negatives(tracks)
    features = _track_means(embed_images(base, images, device), track_of, len(tracks))
    labels_of_track = merge_tracks(features, negatives, cfg.merge_threshold)
    labels = labels_of_track[track_of]
    n_labels = int(labels.max()) + 1
    centroids = np.stack([features[labels_of_track == k].mean(axis=0) for k in range(n_labels)])
    model = _new_model(copy.deepcopy(base), centroids, cfg.freeze_stages).to(device)
    logger.info("adapting on %d crops of %d tracks (%d pseudo-identities)", len(flat), len(tracks), n_labels)
    history = _fine_tune(model, images, labels, label_negatives(negatives, labels_of_track), cfg, rt)
    model.eval()
    report: dict[str, Any] = {
        "base_checkpoint": str(checkpoint),
        "source": source or {"track_set": str(track_set)},
        "window": {"from": time_from, "to": time_to},
        "captured": {"first": min(c.t for c in flat), "last": max(c.t for c in flat)},
        "counts": {
            "crops_in_window": len(crops),
            "tracks_in_window": len({c.track for c in crops}),
            "crops": len(flat),
            "tracks": len(tracks),
            "pseudo_identities": n_labels,
            "sure_negative_pairs": int(negatives.sum() // 2),
            "cameras": len({c.camera for c in flat}),
        },
        "config": asdict(cfg),
        "losses": history,
        "seconds": 0.0,
    }
    entries: dict[str, Any] = {"train": meta.get("train", {}), "data": meta["data"], "dataset": "adapted"}
    if eval_data is not None:
        before, after = _evaluate(base, meta, eval_data, device), _evaluate(model, meta, eval_data, device)
        report["evaluation"] = {"data": str(eval_data), "before": before.metrics, "after": after.metrics}
        entries |= {"metrics": after.metrics, "threshold": after.threshold, "calibration": after.calibration}
        entries |= {"protocol": after.protocol, "metrics_by_protocol": after.by_protocol}
    report["seconds"] = round(time.time() - started, 1)
    save_checkpoint(out, model, entries | {"adaptation": report, "base": meta.get("dataset", "")})
    logger.info("adapted checkpoint written to %s", out)
    return report


if __name__ == "__main__":
    from training.cli import adapt_main

    adapt_main()
