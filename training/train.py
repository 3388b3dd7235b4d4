"""Train APNet: one readable loop (P x K batches, CE + triplet, Adam, warm-up + step schedule), then evaluate.

    python -m training.train --config configs/demo.yaml data_root=data/synth out_dir=checkpoints/demo
    torchrun --nproc_per_node 2 -m training.train --config configs/market1501.yaml   # DistributedDataParallel

The output folder is a checkpoint (model.pt + meta.json, see training.checkpoint) plus train_state.pt (to
resume: resume=auto) and metrics.jsonl (one JSON object per epoch and per evaluation).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.checkpoint import code_version, data_meta, save_checkpoint
from training.config import TrainConfig, load_config
from training.data import ImageDataset, PKBatchSampler, read_dataset, train_transform
from training.evaluate import evaluate_model, format_metrics
from training.losses import ReIDLoss
from training.model import APNet, APNetConfig, load_imagenet_weights

STATE_FILE = "train_state.pt"
LOG_FILE = "metrics.jsonl"


def lr_at(
    epoch: int, base_lr: float, warmup_epochs: int, warmup_factor: float, milestones: list[int], gamma: float
) -> float:
    """Learning rate of an epoch (0-based): linear warm-up from base_lr * warmup_factor, then step decays."""
    factor = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        factor = warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** bisect.bisect_right(sorted(milestones), epoch)


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when launched by torchrun with >1 process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def build_model(cfg: TrainConfig, num_classes: int) -> APNet:
    model = APNet(APNetConfig(cfg.backbone, cfg.level, num_classes, cfg.last_stride))
    if cfg.pretrained == "imagenet":
        load_imagenet_weights(model)
    elif cfg.pretrained != "none":
        load_imagenet_weights(model, cfg.pretrained)
    return model


class MetricsLog:
    """Append-only JSON lines (rank 0 only), so a resumed run continues the same log."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: ReIDLoss,
    optimizer: torch.optim.Optimizer,
    center_optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
    max_iters: int,
    progress: tqdm,
) -> dict[str, float]:
    model.train()
    totals: dict[str, float] = {}
    steps = 0
    for images, labels, _ in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits, features = model(images)
        loss, parts = loss_fn(logits, features, labels)
        optimizer.zero_grad(set_to_none=True)
        if center_optimizer is not None:
            center_optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        if center_optimizer is not None:
            # Undo the loss weight on the centres' gradient, so their learning rate is independent of it.
            scaler.unscale_(center_optimizer)
            for p in loss_fn.center.parameters():
                p.grad.mul_(1.0 / loss_fn.center_weight)
            scaler.step(center_optimizer)
        scaler.update()
        parts |= {"loss": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item()}
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value
        steps += 1
        progress.update()
        progress.set_postfix(loss=f"{parts['loss']:.3f}", acc=f"{parts['acc']:.2f}")
        if steps == max_iters:
            break
    if steps == 0:
        raise RuntimeError("the training loader yielded no batch (fewer identities than ids_per_batch?)")
    return {key: value / steps for key, value in totals.items()} | {"iters": steps}


def save_train_state(path: Path, model: APNet, optimizer, center_optimizer, scaler, loss_fn, epoch: int) -> None:
    """Everything needed to resume (plain tensors and numbers: loadable with weights_only=True)."""
    state = {
        "epoch": epoch,  # epochs completed
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "loss": loss_fn.state_dict(),
        "center_optimizer": center_optimizer.state_dict() if center_optimizer is not None else {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def resume_path(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    folder = Path(cfg.out_dir if cfg.resume == "auto" else cfg.resume)
    path = folder / STATE_FILE
    if path.is_file():
        return path
    if cfg.resume == "auto":
        return None  # nothing to resume yet: start fresh
    raise FileNotFoundError(f"resume={cfg.resume}: {path} not found")


def train(cfg: TrainConfig) -> Path:
    """Train, evaluate on query/gallery and write the checkpoint folder ``cfg.out_dir``; returns it."""
    rank, world_size, local_rank = setup_distributed()
    device = pick_device(cfg.device, local_rank)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    amp = cfg.amp and device.type == "cuda"
    if cfg.ids_per_batch % world_size:
        raise ValueError(f"ids_per_batch {cfg.ids_per_batch} must divide by the {world_size} processes")
    out_dir = Path(cfg.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    data = read_dataset(cfg.data_root, cfg.dataset)
    if rank == 0:
        print(data.summary())
    model = build_model(cfg, data.num_train_pids).to(device)
    loss_fn = ReIDLoss(
        data.num_train_pids, model.feature_dim, cfg.label_smoothing, cfg.triplet_margin, cfg.center_loss_weight
    ).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    center_optimizer = None
    if loss_fn.center is not None:
        center_optimizer = torch.optim.SGD(loss_fn.center.parameters(), lr=cfg.center_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    start_epoch = 0
    state_path = resume_path(cfg)
    if state_path is not None:
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loss_fn.load_state_dict(state["loss"])
        if center_optimizer is not None:
            center_optimizer.load_state_dict(state["center_optimizer"])
        start_epoch = state["epoch"]
        if rank == 0:
            print(f"resumed from {state_path} after epoch {start_epoch}")
    if world_size > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if world_size > 1
        else model
    )

    sampler = PKBatchSampler(
        [s.pid for s in data.train], cfg.ids_per_batch // world_size, cfg.images_per_id, cfg.seed, rank, world_size
    )
    dataset = ImageDataset(
        data.train,
        cfg.height,
        cfg.width,
        train_transform(cfg.height, cfg.width, cfg.flip_prob, cfg.pad, cfg.erase_prob),
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    log = MetricsLog(out_dir / LOG_FILE, enabled=rank == 0)
    iters = len(sampler) if cfg.iters_per_epoch <= 0 else min(len(sampler), cfg.iters_per_epoch)

    def run_eval(epoch: int):
        result = evaluate_model(
            model,
            data,
            cfg.height,
            cfg.width,
            device=device,
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.num_workers,
            flip=cfg.flip_tta,
            metric=cfg.metric,
            rerank=cfg.rerank,
            threshold_fpr=cfg.threshold_fpr,
        )
        print(f"epoch {epoch}: {format_metrics(result.metrics)}  threshold {result.threshold['score']:.4f}")
        log.write({"epoch": epoch, "eval": result.metrics, "roc": result.roc, "threshold": result.threshold})
        return result

    for epoch in range(start_epoch, cfg.epochs):
        lr = lr_at(epoch, cfg.lr, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        started = time.time()
        with tqdm(total=iters, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, leave=False) as progress:
            stats = train_one_epoch(
                net, loader, loss_fn, optimizer, center_optimizer, scaler, device, amp, iters, progress
            )
        log.write({"epoch": epoch + 1, "lr": lr, **stats, "seconds": round(time.time() - started, 2)})
        if rank == 0:
            print(f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.2e} loss {stats['loss']:.4f} acc {stats['acc']:.3f}")
            if cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0:
                save_train_state(out_dir / STATE_FILE, model, optimizer, center_optimizer, scaler, loss_fn, epoch + 1)
            if cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
                run_eval(epoch + 1)
        if world_size > 1:
            dist.barrier()

    if rank == 0:
        save_train_state(out_dir / STATE_FILE, model, optimizer, center_optimizer, scaler, loss_fn, cfg.epochs)
        result = run_eval(cfg.epochs)
        meta = {
            "train": asdict(cfg),
            "data": data_meta(cfg.height, cfg.width),
            "dataset": data.name,
            "metrics": result.metrics,
            "threshold": result.threshold,
            "code_version": code_version(),
        }
        save_checkpoint(out_dir, model, meta)
        print(f"checkpoint written to {out_dir}")
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train APNet (person re-identification).")
    parser.add_argument("--config", help="YAML file of TrainConfig keys (training/config.py)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=data/synth epochs=10")
    args = parser.parse_args(argv)
    train(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
