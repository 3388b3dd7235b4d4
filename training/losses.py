"""Losses of the seed recipe: label-smoothed cross-entropy, batch-hard triplet, optional center loss.

Under DistributedDataParallel the triplet loss mines over the whole P x K batch, as the authors' single-process
DataParallel training does: every rank gathers all ranks' features and labels and computes the same full-batch
loss. The gather passes gradients back to the rank that owns each feature, summed over ranks (every rank holds
the full-batch gradient, so the sum is world_size times it); DDP's gradient averaging divides by world_size,
so the parameters get exactly the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import nn


class _AllGather(torch.autograd.Function):
    """All ranks' rows in rank order; backward sums the gradient over ranks and keeps this rank's rows.

    Written here because torch's differentiable all_gather (torch.distributed.nn) is deprecated for one in a
    private module whose backward needs reduce-scatter, which gloo (CPU) lacks; all_reduce works everywhere.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_across_ranks(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' features and labels, concatenated in rank order (unchanged outside a multi-process group).

    Gradients reach this rank's own slice only (summed over the ranks that computed a loss on it); labels
    carry none. Every rank must hold the same number of rows.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, labels
    gathered = _AllGather.apply(features)
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return gathered, torch.cat(parts)


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Hermans et al. 2017: for each anchor, its farthest positive and nearest negative in the batch.

    Euclidean distances of the raw (pre-BNNeck) features; the hinge max(0, d_ap - d_an + margin), averaged.
    Needs at least one positive and one negative per anchor, which the P x K sampler guarantees.
    """
    features = features.float()  # distances in fp32 even under autocast
    dist = torch.cdist(features, features).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_positive = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    hardest_negative = dist.masked_fill(same, float("inf")).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


class CenterLoss(nn.Module):
    """Wen et al. 2016: squared distance of each feature to a learned centre of its class (its own optimiser)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.centers[labels]).pow(2).sum(dim=1).clamp(1e-12, 1e12).mean()


class ReIDLoss(nn.Module):
    """Cross-entropy (label smoothing) on the logits + batch-hard triplet on the features (+ weighted center loss)."""

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        label_smoothing: float = 0.1,
        triplet_margin: float = 0.3,
        center_weight: float = 0.0,
        gather: bool = True,
    ):
        super().__init__()
        self.gather = gather  # mine triplets over all ranks' batches under DDP
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.margin = triplet_margin
        self.center_weight = center_weight
        self.center = CenterLoss(num_classes, feature_dim) if center_weight > 0 else None

    def forward(
        self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ce = self.ce(logits.float(), labels)
        pool, pool_labels = gather_across_ranks(features, labels) if self.gather else (features, labels)
        triplet = batch_hard_triplet_loss(pool, pool_labels, self.margin)
        total = ce + triplet
        parts = {"ce": ce.item(), "triplet": triplet.item()}
        if self.center is not None:
            center = self.center(features, labels)
            total = total + self.center_weight * center
            parts["center"] = center.item()
        return total, parts
