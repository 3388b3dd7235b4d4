"""Triplet mining under DDP: two CPU processes (gloo) give the single-process loss and gradients on one batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.losses import ReIDLoss
from training.model import APNet, APNetConfig

WORLD = 2
CLASSES = 4


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A P x K batch (4 ids x 2 images); each rank gets two of the identities."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 64, 32, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return images, labels


def _model() -> APNet:
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=CLASSES)).train()
    # Frozen BatchNorm statistics: the output of an image then does not depend on the rest of its batch (on
    # CPU there is no SyncBatchNorm), so any difference left is the mining's. The statistics of one random
    # batch (momentum 1) spread the features out, so the hardest pairs differ between a half and the whole.
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = 1.0
    with torch.no_grad():
        model(torch.randn(16, 3, 64, 32, generator=torch.Generator().manual_seed(5)))
    for norm in norms:
        norm.eval()
    return model


def _step(net: nn.Module, loss_fn: ReIDLoss, images: torch.Tensor, labels: torch.Tensor) -> dict:
    logits, features = net(images)
    loss, parts = loss_fn(logits, features, labels)
    loss.backward()
    module = net.module if isinstance(net, DistributedDataParallel) else net
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return {"parts": parts, "grads": grads}


def _rank(rank: int, init_file: str, out: str) -> None:
    """One DDP step on this rank's half of the batch, mining across ranks and (the control) within the rank."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, labels = _batch()
        local = slice(rank * 4, rank * 4 + 4)
        results = {}
        for gather in (True, False):
            net = DistributedDataParallel(_model())
            results[gather] = _step(net, ReIDLoss(CLASSES, 512, gather=gather), images[local], labels[local])
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _run_ranks(tmp_path: Path) -> list[dict]:
    out = str(tmp_path / "rank")
    mp.spawn(_rank, args=(str(tmp_path / "process-group"), out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_two_gloo_ranks_mine_the_whole_batch_like_one_process(tmp_path):
    images, labels = _batch()
    single = _step(_model(), ReIDLoss(CLASSES, 512), images, labels)
    both = _run_ranks(tmp_path)
    ranks, local = [r[True] for r in both], [r[False] for r in both]

    for result in ranks:  # every rank computes the full-batch triplet loss
        assert result["parts"]["triplet"] == pytest.approx(single["parts"]["triplet"], rel=1e-5)
    # Cross-entropy is per rank over its half; the mean of the halves is the full-batch mean.
    assert sum(r["parts"]["ce"] for r in ranks) / WORLD == pytest.approx(single["parts"]["ce"], rel=1e-5)
    assert ranks[0]["grads"].keys() == single["grads"].keys()
    for name, expected in single["grads"].items():
        for result in ranks:  # DDP leaves the averaged gradient on every rank
            # Summation order differs (per-rank sums, then the average): float32 rounding, far below 1e-4.
            assert _relative_error(result["grads"][name], expected) < 1e-4, name

    # Control: mining within each rank's half gives another loss and other gradients, so the checks above can fail.
    local_triplet = sum(r["parts"]["triplet"] for r in local) / WORLD
    assert local_triplet != pytest.approx(single["parts"]["triplet"], rel=1e-3)
    name = "stages.0.0.weight"
    assert _relative_error(local[0]["grads"][name], single["grads"][name]) > 1e-2


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()
