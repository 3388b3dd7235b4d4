"""Losses of the seed recipe: label-smoothed cross-entropy, batch-hard triplet, optional center loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


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
    ):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.margin = triplet_margin
        self.center_weight = center_weight
        self.center = CenterLoss(num_classes, feature_dim) if center_weight > 0 else None

    def forward(
        self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ce = self.ce(logits.float(), labels)
        triplet = batch_hard_triplet_loss(features, labels, self.margin)
        total = ce + triplet
        parts = {"ce": ce.item(), "triplet": triplet.item()}
        if self.center is not None:
            center = self.center(features, labels)
            total = total + self.center_weight * center
            parts["center"] = center.item()
        return total, parts
