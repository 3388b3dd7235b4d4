"""Train APNet: one readable loop (P x K batches, CE + triplet, Adam, warm-up + step schedule), then evaluate.

    python -m training.train --config configs/demo.yaml data_root=data/synth out_dir=checkpoints/demo
    torchrun --nproc_per_node 2 -m training.train --config configs/market1501.yaml   # DistributedDataParallel

The output folder is a checkpoint (model.pt + meta.json, see training.checkpoint) plus train_state.pt (to
resume: resume=auto; see training.resume) and metrics.jsonl (one JSON object per epoch and per evaluation).
Under DDP each rank takes ids_per_batch / world_size identities of every P x K batch and the triplet loss mines
over all ranks' features (training.losses), so the batch is the single-process one.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.batches import BatchAugment, CachedBatches, cache_bytes, decode_all
from training.checkpoint import code_version, data_meta, save_checkpoint
from training.config import TrainConfig
from training.data import ImageDataset, PKBatchSampler, ReIDDataset, read_dataset, train_transform
from training.evaluate import EvalResult, evaluate_model, format_open_set, format_protocols, protocol_gallery
from training.losses import ReIDLoss
from training.model import APNet, APNetConfig, load_imagenet_weights
from training.resume import (
    STATE_FILE,
    gather_rng_states,
    load_train_state,
    resume_path,
    save_train_state,
    set_rng_state,
)

__all__ = ["LOG_FILE", "STATE_FILE", "lr_at", "train"]
LOG_FILE = "metrics.jsonl"
logger = logging.getLogger(__name__)  # progress and results; the command line shows them (training.cli)


def lr_at(
    epoch: int, base_lr: float, warmup_epochs: int, warmup_factor: float, milestones: list[int], gamma: float
) -> float:
    """Learning rate of an epoch (0-based): linear warm-up from base_lr * warmup_factor, then step decays."""
    factor = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        factor = warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** bisect.bisect_right(sorted(milestones), epoch)


# ---------------------------------------------------------------------------------------------- the process


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among world_size processes, its device, whether autocast is on."""

    rank: int
    world_size: int
    device: torch.device
    amp: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Join the process group when torchrun started several processes; pick the device; seed every generator."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.ids_per_batch % world_size:
        raise ValueError(f"ids_per_batch {cfg.ids_per_batch} must divide by the {world_size} processes")
    protocol_gallery(np.zeros(0), cfg.protocol)  # an unknown protocol fails now, not after training
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels once
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    return Runtime(rank, world_size, device, amp=cfg.amp and device.type == "cuda")


# ------------------------------------------------------------------------------------ model, loss, optimisers


@dataclass
class Trainee:
    """What training changes, and what train_state.pt holds besides the epoch and the generators."""

    model: APNet
    loss_fn: ReIDLoss
    optimizer: torch.optim.Optimizer
    center_optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler

    def parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "loss": self.loss_fn,
            "center_optimizer": self.center_optimizer,
        }


def build_model(cfg: TrainConfig, num_classes: int) -> APNet:
    model = APNet(APNetConfig(cfg.backbone, cfg.level, num_classes, cfg.last_stride, cfg.stem_relu))
    if cfg.pretrained == "imagenet":
        load_imagenet_weights(model)
    elif cfg.pretrained != "none":
        load_imagenet_weights(model, cfg.pretrained)
    return model


def build_trainee(cfg: TrainConfig, num_classes: int, rt: Runtime) -> Trainee:
    model = build_model(cfg, num_classes).to(rt.device)
    loss_fn = ReIDLoss(
        num_classes, model.feature_dim, cfg.label_smoothing, cfg.triplet_margin, cfg.center_loss_weight
    ).to(rt.device)
    params = [p for p in model.parameters() if p.requires_grad]
    # On a CPU the fused Adam is one pass over the weights instead of a dozen (50 ms a step instead of 170 ms for
    # the demo's ResNet-18, measured); GPUs keep torch's default.
    fused = True if rt.device.type == "cpu" else None
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    center_optimizer = None
    if loss_fn.center is not None:
        center_optimizer = torch.optim.SGD(loss_fn.center.parameters(), lr=cfg.center_lr)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp)
    return Trainee(model, loss_fn, optimizer, center_optimizer, scaler)


def distribute(model: APNet, rt: Runtime) -> nn.Module:
    """The module the loop calls: the model itself, or DDP around it (with synchronised BatchNorm on CUDA)."""
    if not rt.distributed:
        return model
    if rt.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)


# ------------------------------------------------------------------------------------------------------ data


@dataclass
class TrainData:
    sampler: PKBatchSampler
    loader: DataLoader | CachedBatches
    # Draws the cached path's augmentations, or seeds each epoch's loader workers; saved with the other generators.
    generator: torch.Generator
    iters: int  # batches per epoch

    @property
    def cached(self) -> bool:
        return isinstance(self.loader, CachedBatches)


def build_train_data(cfg: TrainConfig, data: ReIDDataset, rt: Runtime) -> TrainData:
    """Batches of the training set: from memory when it fits in cfg.cache_mb (training.batches), else a loader."""
    p = cfg.ids_per_batch // rt.world_size
    sampler = PKBatchSampler([s.pid for s in data.train], p, cfg.images_per_id, cfg.seed, rt.rank, rt.world_size)
    generator = torch.Generator().manual_seed(cfg.seed + rt.rank)
    iters = len(sampler) if cfg.iters_per_epoch <= 0 else min(len(sampler), cfg.iters_per_epoch)
    if cache_bytes(len(data.train), cfg.height, cfg.width) <= cfg.cache_mb * 2**20:
        images = decode_all(data.train, cfg.height, cfg.width)
        augment = BatchAugment(cfg.flip_prob, cfg.pad, cfg.erase_prob, cfg.erase_value)
        return TrainData(
            sampler, CachedBatches(images, data.train, sampler, augment, generator, rt.device), generator, iters
        )
    transform = train_transform(cfg.height, cfg.width, cfg.flip_prob, cfg.pad, cfg.erase_prob, tuple(cfg.erase_value))
    loader = DataLoader(
        ImageDataset(data.train, cfg.height, cfg.width, transform),
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=rt.device.type == "cuda",
        # Fresh workers every epoch, seeded from `generator`: persistent workers would carry generator states
        # that a resumed run cannot restore.
        persistent_workers=False,
        generator=generator,
    )
    return TrainData(sampler, loader, generator, iters)


# ------------------------------------------------------------------------------------------------- the loop


def train_step(net: nn.Module, t: Trainee, images: torch.Tensor, labels: torch.Tensor, rt: Runtime) -> dict:
    """One optimisation step on a batch; returns the loss parts, the loss and the batch accuracy."""
    with torch.autocast(rt.device.type, dtype=torch.float16, enabled=rt.amp):
        logits, features = net(images)
    loss, parts = t.loss_fn(logits, features, labels)
    t.optimizer.zero_grad(set_to_none=True)
    if t.center_optimizer is not None:
        t.center_optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    t.scaler.step(t.optimizer)
    if t.center_optimizer is not None:
        centers = list(t.loss_fn.center.parameters())
        if rt.distributed:  # the centres live outside DDP: average their gradients as DDP does the model's
            for p in centers:
                dist.all_reduce(p.grad)
                p.grad.div_(rt.world_size)
        # Undo the loss weight on the centres' gradient, so their learning rate is independent of it.
        t.scaler.unscale_(t.center_optimizer)
        for p in centers:
            p.grad.mul_(1.0 / t.loss_fn.center_weight)
        t.scaler.step(t.center_optimizer)
    t.scaler.update()
    return parts | {"loss": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item()}


def train_one_epoch(net: nn.Module, t: Trainee, td: TrainData, rt: Runtime, progress: tqdm) -> dict[str, float]:
    """At most td.iters steps; returns the mean of each loss part and the number of steps."""
    net.train()
    totals: dict[str, float] = {}
    steps = 0
    for images, labels, _ in td.loader:
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        parts = train_step(net, t, images, labels, rt)
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value
        steps += 1
        progress.update()
        progress.set_postfix(loss=f"{parts['loss']:.3f}", acc=f"{parts['acc']:.2f}")
        if steps == td.iters:
            break
    if steps == 0:
        raise RuntimeError("the training loader yielded no batch (fewer identities than ids_per_batch?)")
    return {key: value / steps for key, value in totals.items()} | {"iters": steps}


class MetricsLog:
    """Append-only JSON lines (rank 0 only), so a resumed run continues the same log."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def resume(cfg: TrainConfig, t: Trainee, td: TrainData, rt: Runtime) -> int:
    """Load train_state.pt when cfg.resume asks for one; returns the number of epochs already done."""
    path = resume_path(cfg.resume, cfg.out_dir)
    if path is None:
        return 0
    state = load_train_state(path, t.parts(), rt.device)
    rngs, sampler = state["rng"] or [], state["sampler"] or {}
    if len(rngs) == rt.world_size:
        set_rng_state(rngs[rt.rank], td.generator)
    elif rt.main:
        logger.warning("%s holds no generator states for %d processes: they stay freshly seeded", path, rt.world_size)
    td.sampler.seed = sampler.get("seed", td.sampler.seed)
    if rt.main:
        logger.info("resumed from %s after epoch %d", path, state["epoch"])
    return state["epoch"]


def checkpoint_state(path: Path, t: Trainee, td: TrainData, rt: Runtime, epochs_done: int) -> None:
    """Write train_state.pt (collective: every rank contributes its generators, rank 0 writes)."""
    rngs = gather_rng_states(td.generator)
    if rt.main:
        save_train_state(path, t.parts(), epochs_done, rngs, {"seed": td.sampler.seed, "epoch": epochs_done})


def evaluate(cfg: TrainConfig, model: APNet, data: ReIDDataset, rt: Runtime) -> EvalResult:
    # fork_rng: evaluation draws from torch's generator (the loader's seed); the training stream must not see it,
    # or a run that evaluates in between would differ from one resumed at the same epoch.
    devices = [rt.device] if rt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return evaluate_model(
            model,
            data,
            cfg.height,
            cfg.width,
            device=rt.device,
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.num_workers,
            flip=cfg.flip_tta,
            metric=cfg.metric,
            rerank=cfg.rerank,
            threshold_fpr=cfg.threshold_fpr,
            protocol=cfg.protocol,
        )


def evaluate_and_log(cfg: TrainConfig, model: APNet, data: ReIDDataset, rt: Runtime, log: MetricsLog, epoch: int):
    result = evaluate(cfg, model, data, rt)
    logger.info("epoch %d, threshold %.4f (protocol %s):", epoch, result.threshold["score"], result.protocol)
    logger.info(format_protocols(result))
    if result.calibration:
        logger.info(format_open_set(result))
    log.write(
        {
            "epoch": epoch,
            "eval": result.metrics,
            "protocol": result.protocol,
            "by_protocol": result.by_protocol,
            "roc": result.roc,
            "threshold": result.threshold,
        }
    )
    return result


def write_checkpoint(cfg: TrainConfig, model: APNet, data: ReIDDataset, result: EvalResult, out_dir: Path) -> None:
    meta = {
        "train": asdict(cfg),
        "data": data_meta(cfg.height, cfg.width),
        "dataset": data.name,
        "metrics": result.metrics,
        "protocol": result.protocol,
        "metrics_by_protocol": result.by_protocol,
        "threshold": result.threshold,
        "calibration": result.calibration,  # the verdict's operating points; export copies them into the spec
        "code_version": code_version(),
    }
    save_checkpoint(out_dir, model, meta)
    logger.info("checkpoint written to %s", out_dir)


def train(cfg: TrainConfig) -> Path:
    """Train, evaluate on query/gallery and write the checkpoint folder ``cfg.out_dir``; returns it."""
    rt = setup_runtime(cfg)
    out_dir = Path(cfg.out_dir)
    if rt.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    data = read_dataset(cfg.data_root, cfg.dataset, msmt_train_val=cfg.msmt_train_val)
    if rt.main:
        logger.info(data.summary())
    t = build_trainee(cfg, data.num_train_pids, rt)
    td = build_train_data(cfg, data, rt)
    start_epoch = resume(cfg, t, td, rt)
    net = distribute(t.model, rt)
    log = MetricsLog(out_dir / LOG_FILE, enabled=rt.main)

    for epoch in range(start_epoch, cfg.epochs):
        lr = lr_at(epoch, cfg.lr, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        td.sampler.set_epoch(epoch)
        started = time.time()
        # a bar for people on a terminal; logs get the one-line summary per epoch below
        terminal = rt.main and sys.stderr.isatty()
        with tqdm(total=td.iters, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not terminal, leave=False) as bar:
            stats = train_one_epoch(net, t, td, rt, bar)
        seconds = time.time() - started
        images_per_s = stats["iters"] * cfg.ids_per_batch * cfg.images_per_id / seconds
        log.write({"epoch": epoch + 1, "lr": lr, **stats, "seconds": round(seconds, 2), "images_per_s": images_per_s})
        if rt.main:
            logger.info(
                "epoch %d/%d lr %.2e loss %.4f acc %.3f (%.1f s, %.0f images/s)",
                *(epoch + 1, cfg.epochs, lr, stats["loss"], stats["acc"], seconds, images_per_s),
            )
        if cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0:
            checkpoint_state(out_dir / STATE_FILE, t, td, rt, epoch + 1)
        if rt.main and cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
            evaluate_and_log(cfg, t.model, data, rt, log, epoch + 1)
        if rt.distributed:
            dist.barrier()

    checkpoint_state(out_dir / STATE_FILE, t, td, rt, cfg.epochs)
    if rt.main:
        result = evaluate_and_log(cfg, t.model, data, rt, log, cfg.epochs)
        write_checkpoint(cfg, t.model, data, result, out_dir)
    if rt.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return out_dir


if __name__ == "__main__":
    from training.cli import train_main

    train_main()
