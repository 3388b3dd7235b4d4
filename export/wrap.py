"""The serving module: raw uint8 RGB crops in, L2-normalised APNet embeddings out.

Everything a server would otherwise have to reimplement (and get subtly wrong) lives inside the graph:
dtype cast, /255, mean/std, NHWC -> NCHW, eval-mode embedding, optional flip-TTA, L2 normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class ServingModel(nn.Module):
    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], flip_tta: bool):
        super().__init__()
        if model.training:
            raise ValueError("the model must be in eval mode (BatchNorm running statistics) before export")
        self.model = model
        self.flip_tta = flip_tta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float, normalised like the training loader: (x/255 - mean)/std."""
        # Cast first: TensorRT accepts a uint8 network input only when a cast consumes it.
        x = images.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.flip_tta:
            # One pass over [x; mirrored x] keeps a single copy of the network in the graph (half the nodes).
            both = self.model.embed(torch.cat([x, torch.flip(x, dims=[3])], dim=0))
            feature = both.unflatten(0, (2, -1)).sum(dim=0)
        else:
            feature = self.model.embed(x)
        return l2_normalize(feature)


def l2_normalize(feature: torch.Tensor) -> torch.Tensor:
    """Unit rows. Dividing by the largest magnitude first changes nothing mathematically but keeps the sum of
    squares <= D, so fp16 variants (ONNX fp16, TensorRT fp16) cannot overflow (65504) on 2048-d features."""
    peak = feature.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    return F.normalize(feature / peak, p=2.0, dim=1)
