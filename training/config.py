"""The training configuration: one typed dataclass, read from YAML and ``key=value`` overrides.

The defaults are the seed's recipe (APNet level 2 on ResNet-50, 384x192, Adam 4e-4, batch 20 ids x 4 images,
160 epochs, warm-up 10 epochs, steps at 40/80/120) with two departures from the authors' code, kept as defaults
because every earlier checkpoint and the demo use them: torchvision's stem ReLU (``stem_relu``) and mixed
precision (``amp``). The faithful configs (configs/market1501.yaml, duke.yaml, msmt17.yaml) turn both off.
Values are converted to each field's type here, at the edge, so the rest of the code sees plain typed values.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    # data
    data_root: str = "Datasets"
    dataset: str = "auto"  # market1501 | duke | msmt17 (a sub-folder of data_root) | auto (data_root itself)
    height: int = 384
    width: int = 192
    num_workers: int = 4  # loader processes when the training set does not fit in cache_mb
    # Decode the training set once into memory and augment whole batches as tensors (training.batches) when its
    # resized uint8 pixels fit in this many MiB; 0: always the DataLoader. 1024 holds 57k crops at 128x64.
    cache_mb: int = 1024
    msmt_train_val: bool = False  # MSMT17 list files: also train on list_val.txt (the authors train on list_train)
    # model
    backbone: str = "resnet50"
    level: int = 2
    last_stride: int = 1
    stem_relu: bool = True  # False: no ReLU after the stem's BatchNorm, as in the authors' code
    pretrained: str = "imagenet"  # "imagenet" (torchvision's weights enum), a local torchvision .pth, or "none"
    # batches: P identities x K images
    ids_per_batch: int = 20
    images_per_id: int = 4
    # augmentation
    flip_prob: float = 0.5
    pad: int = 10
    erase_prob: float = 0.5
    erase_value: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # per channel, after normalisation
    # optimisation
    lr: float = 4e-4
    weight_decay: float = 1e-3
    epochs: int = 160
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: list[int] = field(default_factory=lambda: [40, 80, 120])
    gamma: float = 0.1
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    center_loss_weight: float = 0.0  # the seed's optional center loss uses 0.0005
    center_lr: float = 0.5
    # run
    out_dir: str = "checkpoints/apnet"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads of torch; 0: torch's default (one per core)
    amp: bool = True  # mixed precision (fp16 autocast), CUDA only; the authors train in fp32
    iters_per_epoch: int = 0  # 0: one pass over the P x K plan; > 0 caps it (smoke tests)
    save_every: int = 10  # epochs between resumable train states
    eval_every: int = 0  # epochs between evaluations; 0: only at the end
    resume: str = ""  # a folder holding train_state.pt, or "auto" for out_dir when it has one
    # evaluation
    flip_tta: bool = True
    metric: str = "cosine"
    protocol: str = "standard"  # standard | apnet: the gallery the checkpoint's metrics use (both are printed)
    rerank: bool = False
    threshold_fpr: float = 1e-3
    eval_batch_size: int = 128


def _convert(name: str, kind: Any, value: Any) -> Any:
    """A YAML or command-line value -> the field's type (YAML reads 4e-4 as a string, the shell gives strings)."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = value.strip("[]").replace(",", " ").split()
        return [_convert(name, item, v) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    try:
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    return "" if value is None else str(value)


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a flat dict, converting each value; unknown keys are an error."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
    return TrainConfig(**{k: _convert(k, hints[k], v) for k, v in values.items()})


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file (a flat mapping), then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        values.update(loaded)
    values.update(parse_overrides(list(overrides)))
    return build_config(values)
