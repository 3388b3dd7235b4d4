"""ReID data sets on disk, the P x K identity sampler and the image transforms.

Layouts: the Market-1501 one (``bounding_box_train/``, ``query/``, ``bounding_box_test/``; Market-1501,
DukeMTMC-reID, converted MSMT17 and the synthetic set) and MSMT17's own list files (``list_train.txt``,
``list_val.txt``, ``list_query.txt``, ``list_gallery.txt`` with ``train/`` and ``test/`` image folders).
Junk images (person -1) are dropped; distractors (person 0) stay in the gallery only; training ids are
relabelled 0..N-1. Images are decoded and resized by ``formats.images`` so training, export and serving
see the same pixels.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from formats.images import load_image
from formats.names import is_image_file, person_and_camera
from training.checkpoint import IMAGENET_MEAN, IMAGENET_STD

DATASETS = ("market1501", "duke", "msmt17")
MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MSMT_LISTS = {
    "train": ("list_train.txt", "list_val.txt"),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}


@dataclass(frozen=True)
class Sample:
    path: str
    pid: int
    camid: int  # 0-based


@dataclass
class ReIDDataset:
    name: str
    root: Path
    train: list[Sample]  # pids relabelled 0..num_train_pids-1
    query: list[Sample]
    gallery: list[Sample]

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    def summary(self) -> str:
        def ids(samples):
            return len({s.pid for s in samples})

        return (
            f"{self.name} ({self.root}): train {len(self.train)} images / {ids(self.train)} ids, "
            f"query {len(self.query)} / {ids(self.query)}, gallery {len(self.gallery)} / {ids(self.gallery)}"
        )


def resolve_root(data_root: str | Path, dataset: str = "auto") -> Path:
    """The folder holding the split folders: ``data_root/dataset`` when it exists (the seed's Datasets/), else data_root."""
    root = Path(data_root)
    if dataset not in ("auto", *DATASETS):
        raise ValueError(f"dataset must be 'auto' or one of {DATASETS}, got {dataset!r}")
    if dataset != "auto" and (root / dataset).is_dir():
        return root / dataset
    return root


def read_dataset(data_root: str | Path, dataset: str = "auto", msmt_train_val: bool = False) -> ReIDDataset:
    """Read a data set in the Market-1501 layout or MSMT17's list-file layout; raise a clear error otherwise.

    ``msmt_train_val``: MSMT17's training split is list_train.txt and also list_val.txt (the authors train on
    list_train.txt alone, the default).
    """
    root = resolve_root(data_root, dataset)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    name = dataset if dataset != "auto" else root.name
    if (root / MARKET_SPLITS[0]).is_dir():
        missing = [s for s in MARKET_SPLITS if not (root / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"{root} is missing {missing} (the Market-1501 layout needs {MARKET_SPLITS})")
        train, query, gallery = (_read_market_folder(root / split) for split in MARKET_SPLITS)
    elif (root / MSMT_LISTS["train"][0]).is_file():
        train, query, gallery = (_read_msmt_lists(root, part, msmt_train_val) for part in ("train", "query", "gallery"))
    else:
        raise FileNotFoundError(
            f"{root} holds neither the Market-1501 layout ({', '.join(MARKET_SPLITS)}/) nor MSMT17's list files "
            f"({MSMT_LISTS['train'][0]}, {MSMT_LISTS['query'][0]}, {MSMT_LISTS['gallery'][0]})"
        )
    train = [s for s in train if s.pid > 0]
    query = [s for s in query if s.pid > 0]
    gallery = [s for s in gallery if s.pid >= 0]  # distractors (0) are valid gallery negatives
    for split, samples in (("train", train), ("query", query), ("gallery", gallery)):
        if not samples:
            raise ValueError(f"{root}: the {split} split has no images")
    labels = {pid: i for i, pid in enumerate(sorted({s.pid for s in train}))}
    train = [Sample(s.path, labels[s.pid], s.camid) for s in train]
    return ReIDDataset(name=name, root=root, train=train, query=query, gallery=gallery)


def parse_market_name(name: str) -> tuple[int, int]:
    """(person id, 0-based camera) from a Market/Duke-style file name."""
    parsed = person_and_camera(name)
    if parsed is None or int(parsed[1]) < 1:
        raise ValueError(f"malformed image name {name!r}: expected PPPP_cC... (e.g. 0002_c1s1_000451_03.jpg)")
    return int(parsed[0]), int(parsed[1]) - 1


def _read_market_folder(folder: Path) -> list[Sample]:
    samples = []
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            continue  # Thumbs.db and the like
        pid, camid = parse_market_name(path.name)
        if pid >= 0:
            samples.append(Sample(str(path), pid, camid))
    return samples


def _read_msmt_lists(root: Path, part: str, with_val: bool = False) -> list[Sample]:
    """MSMT17 lines: ``0000/0000_000_01_0303morning_0015_0.jpg 0`` (relative to train/ or test/); camera = field 3."""
    image_dir = root / ("train" if part == "train" else "test")
    samples = []
    for list_name in MSMT_LISTS[part]:
        if list_name == "list_val.txt" and not with_val:
            continue
        list_path = root / list_name
        if not list_path.is_file():
            if list_name == "list_val.txt":
                continue
            raise FileNotFoundError(f"{list_path} not found (MSMT17 layout: {', '.join(sum(MSMT_LISTS.values(), ()))})")
        for number, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            fields_of_name = Path(fields[0]).name.split("_")
            if len(fields) != 2 or len(fields_of_name) < 3 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"{list_path}:{number}: expected 'RELATIVE/PATH.jpg PID', got {line!r}")
            path = image_dir / fields[0]
            if not path.is_file() and (root / fields[0]).is_file():
                path = root / fields[0]
            # MSMT17 labels start at 0 for a real person and it has no distractors: shift past our 0 = distractor.
            samples.append(Sample(str(path), int(fields[1]) + 1, int(fields_of_name[2]) - 1))
    return samples


class ImageDataset(Dataset):
    """(image tensor, pid, camid) of each sample; images decoded and resized by formats.images."""

    def __init__(self, samples: list[Sample], height: int, width: int, transform: v2.Transform):
        self.samples = samples
        self.height, self.width = height, width
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        rgb = load_image(sample.path, self.height, self.width)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # uint8 CHW
        return self.transform(image), sample.pid, sample.camid


def train_transform(
    height: int,
    width: int,
    flip: float = 0.5,
    pad: int = 10,
    erase: float = 0.5,
    erase_value: tuple[float, ...] = (0.0, 0.0, 0.0),
) -> v2.Transform:
    """The seed's augmentation on an already resized uint8 CHW image: flip, pad + random crop, normalise, erase.

    ``erase_value``: what an erased box holds, per channel, after normalisation: 0 paints the ImageNet mean
    colour; the authors' code writes the mean's own numbers (0.485, 0.456, 0.406) into the normalised tensor.
    """
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(flip),
            v2.RandomCrop((height, width), padding=pad),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            v2.RandomErasing(erase, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=list(erase_value)),
        ]
    )


def eval_transform() -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class PKBatchSampler(Sampler[list[int]]):
    """Batches of P identities x K images each (identities with fewer than K images repeat some).

    Every epoch reshuffles (seeded by ``seed + epoch``, see ``set_epoch``); with ``world_size`` > 1 each
    rank takes every ``world_size``-th batch, so the ranks see disjoint batches of the same epoch plan.
    """

    def __init__(self, pids: list[int], p: int, k: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[pid].append(index)
        if len(by_pid) < p:
            raise ValueError(f"a batch needs {p} identities but the training set has only {len(by_pid)}")
        self.by_pid = dict(by_pid)
        self.p, self.k = p, k
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        chunks: dict[int, list[list[int]]] = {}
        for pid, indices in self.by_pid.items():
            indices = indices[:]
            if len(indices) < self.k:
                indices += rng.choices(indices, k=self.k - len(indices))
            rng.shuffle(indices)
            usable = len(indices) - len(indices) % self.k
            chunks[pid] = [indices[i : i + self.k] for i in range(0, usable, self.k)]
        batches = []
        available = [pid for pid in chunks if chunks[pid]]
        while len(available) >= self.p:
            batch = []
            for pid in rng.sample(available, self.p):
                batch += chunks[pid].pop()
            batches.append(batch)
            available = [pid for pid in available if chunks[pid]]
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._plan())

    def __len__(self) -> int:
        return len(self._plan())
