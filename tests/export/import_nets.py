"""Small ReID-shaped networks "trained elsewhere", built and exported on the spot for export.import_model tests
(and the re-embedding tests that need two models): nothing is downloaded.

- NCHW RGB, ImageNet mean/std in 0-1 units, a static 64x32 input and two outputs (embedding and logits), as a
  torchreid-style export;
- NHWC BGR in 0-255 units with a dynamic spatial size and one output, as a Caffe/OpenCV-style export.

Random weights make every channel, position and pixel scale matter, so a wrong layout, channel order or
normalisation in the wrapped graph changes the embedding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

HEIGHT, WIDTH = 64, 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # 0-1 units, RGB
BGR_MEAN_255, BGR_STD_255 = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)  # 0-255 units, BGR


class PlanarRGBNet(nn.Module):
    """(N, 3, H, W) float -> (embedding (N, 32), logits (N, 5))."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4, 32)
        self.classifier = nn.Linear(32, 5)
        with torch.no_grad():  # BatchNorm statistics that are not the identity
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        feature = self.fc(nn.functional.adaptive_avg_pool2d(y, (2, 2)).flatten(1))
        return feature, self.classifier(feature)


class InterleavedBGRNet(nn.Module):
    """(N, H, W, 3) float in 0-255 units -> embedding (N, 24); any spatial size."""

    def __init__(self, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24 * 2, 24)

    def forward(self, x):
        y = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        y = torch.relu(self.conv2(y))
        # Mean and max pooling: both are defined for any input size (the export keeps H and W dynamic).
        return self.fc(torch.cat([y.mean((2, 3)), y.amax((2, 3))], dim=1))


def _export(module: nn.Module, example: torch.Tensor, path: Path, inputs: str, outputs: list[str], axes: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: fast (well under a second here), and what many published ReID exports used.
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[inputs],
            output_names=outputs,
            opset_version=17,
            dynamic_axes=axes,
            dynamo=False,
        )
    return path


def export_planar_rgb(path: Path, seed: int = 0) -> Path:
    example = torch.zeros(2, 3, HEIGHT, WIDTH)
    axes = {"input": {0: "n"}, "feat": {0: "n"}, "logits": {0: "n"}}
    return _export(PlanarRGBNet(seed), example, path, "input", ["feat", "logits"], axes)


def export_interleaved_bgr(path: Path, seed: int = 1) -> Path:
    example = torch.zeros(2, HEIGHT, WIDTH, 3)
    axes = {"pixels": {0: "n", 1: "h", 2: "w"}, "embedding": {0: "n"}}
    return _export(InterleavedBGRNet(seed), example, path, "pixels", ["embedding"], axes)


def planar_rgb_args(onnx_path: Path) -> list[str]:
    """The import command line of the NCHW RGB network (without --out)."""
    return [
        str(onnx_path),
        "--layout",
        "nchw",
        "--colour",
        "rgb",
        "--mean",
        ",".join(map(str, IMAGENET_MEAN)),
        "--std",
        ",".join(map(str, IMAGENET_STD)),
        "--units",
        "0-1",
        "--output",
        "feat",
    ]


def interleaved_bgr_args(onnx_path: Path) -> list[str]:
    """The import command line of the NHWC BGR 0-255 network (without --out), with flip-TTA."""
    return [
        str(onnx_path),
        "--size",
        f"{HEIGHT}x{WIDTH}",
        "--layout",
        "nhwc",
        "--colour",
        "bgr",
        "--mean",
        *map(str, BGR_MEAN_255),
        "--std",
        *map(str, BGR_STD_255),
        "--units",
        "0-255",
        "--flip-tta",
    ]
