"""APNet: a torchvision ResNet with an attention pyramid, a BNNeck and a bias-free identity classifier.

The pyramid sits at five places (after the stem and after each residual stage). Pyramid level L stacks
L attentions at every place, finest first: a 4-group split-attend-merge-stack block (level 3), a 2-group
one (level 2), then a squeeze-and-excitation channel attention with 8 hidden units (level 1).
Levels 0-2 match the paper authors' implementation parameter for parameter; level 3 also runs here.

The authors' ResNet has no ReLU between the stem's BatchNorm and its max-pool (the call is commented out in
their forward), so the stem passes negative activations on to layer1; ``stem_relu=False`` reproduces that,
``stem_relu=True`` (the default, which every checkpoint without the key was trained with) is torchvision's stem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn

BACKBONES = ("resnet50", "resnet34", "resnet18")
SE_HIDDEN = 8  # hidden units of every SE block (reductions 8, 32, 64, 128, 256 on ResNet-50)
SAMS_SPLITS = {2: 2, 3: 4}  # pyramid level -> number of channel groups of its SAMS block


@dataclass
class APNetConfig:
    backbone: str = "resnet50"
    level: int = 2
    num_classes: int = 751
    last_stride: int = 1
    stem_relu: bool = True  # False: the authors' stem (conv1, bn1, max-pool, no ReLU)


class SEAttention(nn.Module):
    """Channel attention: global average pool, C -> 8 -> C bias-free MLP, sigmoid; returns x * a(x)."""

    def __init__(self, channels: int, hidden: int = SE_HIDDEN):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc(x.mean(dim=(2, 3)))
        return x * a[:, :, None, None]


class SAMSAttention(nn.Module):
    """Split-attend-merge-stack: split channels into r groups, attend from their sum, rescale each group.

    The groups share one squeeze (sum of groups, average pool, 1x1 conv, BN, ReLU); a second 1x1 conv
    gives r channel attentions, normalised by a softmax across the groups. A BatchNorm with a frozen
    bias follows the re-stacked groups.
    """

    def __init__(self, channels: int, splits: int):
        super().__init__()
        if channels % splits:
            raise ValueError(f"{channels} channels cannot be split into {splits} equal groups")
        self.splits = splits
        hidden = max(channels * splits // 4, 32)
        self.squeeze = nn.Sequential(
            nn.Conv2d(channels // splits, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.excite = nn.Conv2d(hidden, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        groups = x.view(n, self.splits, c // self.splits, h, w)
        pooled = groups.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.excite(self.squeeze(pooled)).view(n, self.splits, c // self.splits)
        attention = F.softmax(logits, dim=1)[..., None, None]
        return self.bn((groups * attention).reshape(n, c, h, w))


def pyramid_place(channels: int, level: int) -> nn.Sequential:
    """The attentions of one place, applied finest first: SAMS r=4 (level 3), SAMS r=2 (level 2), SE (level 1)."""
    blocks: list[nn.Module] = [SAMSAttention(channels, SAMS_SPLITS[lv]) for lv in range(level, 1, -1)]
    if level >= 1:
        blocks.append(SEAttention(channels))
    return nn.Sequential(*blocks)  # empty at level 0: the identity


class APNet(nn.Module):
    def __init__(self, cfg: APNetConfig):
        super().__init__()
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {cfg.backbone!r}")
        if not 0 <= cfg.level <= 3:
            raise ValueError(f"pyramid level must be 0..3, got {cfg.level}")
        if cfg.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {cfg.last_stride}")
        self.cfg = cfg
        resnet = getattr(torchvision.models, cfg.backbone)(weights=None)
        if cfg.last_stride == 1:
            _remove_first_stride(resnet.layer4[0])
        # An Identity in place of the ReLU keeps the module layout (and the state_dict keys) of both variants.
        stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu if cfg.stem_relu else nn.Identity(), resnet.maxpool)
        self.stages = nn.ModuleList([stem, resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        channels = [resnet.conv1.out_channels] + [_out_channels(stage) for stage in self.stages[1:]]
        self.pyramid = nn.ModuleList([pyramid_place(c, cfg.level) for c in channels])
        self.feature_dim = channels[-1]
        self.bnneck = nn.BatchNorm1d(self.feature_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: the bias stays at zero, so the feature stays centred
        self.classifier = nn.Linear(self.feature_dim, cfg.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage, attention in zip(self.stages, self.pyramid, strict=True):
            x = attention(stage(x))
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-BNNeck feature (N, D): global average pool of the feature map (the triplet loss uses it)."""
        return self.forward_features(x).mean(dim=(2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Post-BNNeck feature (N, D): the embedding used for retrieval."""
        return self.bnneck(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.embed(x)
        feature = self.pool(x)
        return self.classifier(self.bnneck(feature)), feature


def _remove_first_stride(block: nn.Module) -> None:
    """Last stride 1: the first block of layer4 keeps its input resolution (conv and shortcut alike)."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def _backbone_key(key: str) -> str | None:
    """torchvision ResNet state_dict key -> APNet key; None for the ImageNet classifier and for unknown keys."""
    head, _, rest = key.partition(".")
    if head in ("conv1", "bn1"):
        return f"stages.0.{0 if head == 'conv1' else 1}.{rest}"
    if head.startswith("layer") and head[len("layer") :].isdigit():
        return f"stages.{head[len('layer') :]}.{rest}"
    return None


# BatchNorm's step counter, added to torchvision's files after 2018 (torch 0.4.1): the files the authors name,
# e.g. resnet50-19c8e357.pth, lack it. It only matters for BatchNorm with momentum=None, which ResNet does not use.
OPTIONAL_SUFFIX = ".num_batches_tracked"


def load_imagenet_weights(model: APNet, path: str | Path | None = None) -> None:
    """Initialise the backbone from ImageNet weights (pyramid, BNNeck and classifier keep their init).

    ``path``: a local ``.pth`` in torchvision's ResNet state_dict format, old (resnet50-19c8e357.pth, without
    BatchNorm's num_batches_tracked) or new (resnet50-0676ba61.pth, resnet50-11ad3fa6.pth). Without it the
    weights come from torchvision's weights enum, which downloads them (and fails offline). Any key other than
    a missing num_batches_tracked that does not match the model is an error listing every such key.
    """
    if path is None:
        weights = torchvision.models.get_model_weights(model.cfg.backbone).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:
            raise RuntimeError(
                f"could not download the ImageNet weights of {model.cfg.backbone} ({type(exc).__name__}: {exc}); "
                f"pass a local torchvision state_dict instead (training config: pretrained=/path/to/"
                f"{model.cfg.backbone}.pth), or pretrained=none for a random initialisation"
            ) from exc
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights not found: {path} (expected a torchvision ResNet .pth)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    mapped, unexpected = {}, []
    for key, value in state.items():
        new_key = _backbone_key(key)
        if new_key is not None:
            mapped[new_key] = value
        elif not key.startswith("fc."):
            unexpected.append(key)
    own = model.state_dict()
    expected = {k for k in own if k.startswith("stages.")}
    missing = sorted(k for k in expected - mapped.keys() if not k.endswith(OPTIONAL_SUFFIX))
    unexpected = sorted(unexpected + [k for k in mapped if k not in expected])
    if missing or unexpected:
        raise ValueError(
            f"{path or 'downloaded weights'} does not match a torchvision {model.cfg.backbone}: "
            f"{len(missing)} missing keys {missing}, {len(unexpected)} unexpected keys {unexpected}"
        )
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} in the weights, {tuple(own[key].shape)} in the model")
    model.load_state_dict(mapped, strict=False)
