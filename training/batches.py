"""The fast input path for small training sets: decode every crop once, augment whole batches as tensors.

A training set whose resized uint8 pixels fit in a memory budget (``cache_mb``) is decoded once, by a thread pool,
into one (N, 3, H, W) uint8 tensor. Each P x K batch is then gathered from it and augmented in one pass on the
training device: horizontal flip, zero padding + random crop, scaling to [0, 1], mean/std normalisation and
random erasing, with torchvision's parameter distributions (``training.data.train_transform``) drawn per image.
No decoding, no per-image Python work and no worker processes in the loop. A set that does not fit (the full
recipes' Market-1501 at 384x192 is 2.9 GB) goes through ``training.data``'s DataLoader with workers instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from formats.images import load_image
from training.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from training.data import PKBatchSampler, Sample

__all__ = ["BatchAugment", "CachedBatches", "cache_bytes", "decode_all"]


def cache_bytes(count: int, height: int, width: int) -> int:
    """Bytes of ``count`` decoded uint8 RGB crops of height x width."""
    return count * 3 * height * width


def decode_all(samples: Sequence[Sample], height: int, width: int, threads: int = 0) -> torch.Tensor:
    """(N, 3, H, W) uint8: every sample decoded and resized by formats.images, as the DataLoader path does.

    OpenCV releases the GIL while it decodes and resizes, so a thread pool uses every core (``threads`` 0: one
    per core this process may run on).
    """
    out = torch.empty((len(samples), 3, height, width), dtype=torch.uint8)
    threads = threads or len(os.sched_getaffinity(0))

    def put(index: int) -> None:
        rgb = load_image(samples[index].path, height, width)
        out[index] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(put, range(len(samples))))
    return out


class BatchAugment:
    """train_transform for a whole uint8 batch: flip, pad + crop, normalise, erase; parameters drawn per image.

    Random numbers come from ``generator`` (a CPU generator, saved with the train state so a resumed run draws
    the same); the pixels are moved on whichever device the batch is on.
    """

    def __init__(
        self,
        flip: float = 0.5,
        pad: int = 10,
        erase: float = 0.5,
        erase_value: Sequence[float] = (0.0, 0.0, 0.0),
        erase_scale: tuple[float, float] = (0.02, 0.4),
        erase_ratio: tuple[float, float] = (0.3, 3.33),
    ):
        self.flip, self.pad, self.erase = flip, pad, erase
        self.erase_value = torch.tensor(erase_value, dtype=torch.float32)
        self.erase_scale, self.erase_ratio = erase_scale, erase_ratio

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, H, W) float32, normalised with the ImageNet mean and std."""
        n, _, h, w = images.shape
        flipped = torch.rand(n, generator=generator) < self.flip
        top = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        rows = top[:, None] + torch.arange(h)  # (N, H) rows of the padded image
        columns = torch.arange(w).expand(n, w)
        columns = torch.where(flipped[:, None], columns.flip(1), columns) + left[:, None]  # (N, W)
        device = images.device
        padded = F.pad(images, (self.pad,) * 4)  # zeros, as RandomCrop's default fill
        batch = torch.arange(n, device=device)[:, None, None]
        # (N, H, W, C): advanced indices on dims 0, 2, 3 with a slice between them go first
        crops = padded[batch, :, rows.to(device)[:, :, None], columns.to(device)[:, None, :]]
        mean = torch.tensor(IMAGENET_MEAN, device=device)
        std = torch.tensor(IMAGENET_STD, device=device)
        out = (crops.float() * (1.0 / 255.0) - mean) / std
        out = out.permute(0, 3, 1, 2).contiguous()
        for i, (y, x, eh, ew) in self._erasures(n, h, w, generator):
            out[i, :, y : y + eh, x : x + ew] = self.erase_value.to(device)[:, None, None]
        return out

    def _erasures(self, n: int, h: int, w: int, generator: torch.Generator) -> Iterator[tuple[int, tuple]]:
        """(image, (top, left, height, width)) of each box to erase: torchvision's RandomErasing parameters."""
        if self.erase <= 0:
            return
        log_ratio = (math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1]))
        for i in torch.nonzero(torch.rand(n, generator=generator) < self.erase).flatten().tolist():
            for _ in range(10):  # as torchvision: ten tries at a box that fits, else no erasure
                area = h * w * torch.empty(1).uniform_(*self.erase_scale, generator=generator).item()
                aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
                eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if eh < h and ew < w:
                    y = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
                    x = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
                    yield i, (y, x, eh, ew)
                    break


class CachedBatches:
    """Iterates like the training DataLoader: (images float32, pids, camids) per P x K batch of the sampler."""

    def __init__(
        self,
        images: torch.Tensor,
        samples: Sequence[Sample],
        sampler: PKBatchSampler,
        augment: BatchAugment,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ):
        self.images = images.to(device)
        self.pids = torch.tensor([s.pid for s in samples], dtype=torch.int64)
        self.camids = torch.tensor([s.camid for s in samples], dtype=torch.int64)
        self.sampler, self.augment, self.generator = sampler, augment, generator

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for indices in self.sampler:
            index = torch.tensor(indices, dtype=torch.int64)
            batch = self.images[index.to(self.images.device)]
            yield self.augment(batch, self.generator), self.pids[index], self.camids[index]
