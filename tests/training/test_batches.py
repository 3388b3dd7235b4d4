"""The in-memory input path: decoded pixels equal the loader's, batch augmentation equals train_transform's ops."""

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from training.batches import BatchAugment, CachedBatches, cache_bytes, decode_all
from training.config import load_config
from training.data import ImageDataset, PKBatchSampler, eval_transform, read_dataset
from training.train import Runtime, build_train_data

ROOT = Path(__file__).resolve().parents[2]


def _images(n: int = 6, h: int = 16, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_decoded_cache_holds_the_loaders_pixels(tiny_market):
    data = read_dataset(tiny_market)
    cache = decode_all(data.train, 64, 32, threads=2)
    dataset = ImageDataset(data.train, 64, 32, v2.Identity())
    assert cache.shape == (len(data.train), 3, 64, 32) and cache.dtype == torch.uint8
    assert all(torch.equal(cache[i], dataset[i][0]) for i in range(len(data.train)))
    assert cache_bytes(len(data.train), 64, 32) == cache.numel()


def test_without_flip_crop_or_erase_a_batch_is_the_eval_transform():
    images = _images()
    out = BatchAugment(flip=0.0, pad=0, erase=0.0)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.stack([eval_transform()(x) for x in images]))


def test_every_image_flips_with_flip_one():
    images = _images()
    out = BatchAugment(flip=1.0, pad=0, erase=0.0)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.stack([eval_transform()(x.flip(-1)) for x in images]))


def test_each_image_is_one_crop_of_its_zero_padded_self_at_its_own_offset():
    images, pad = _images(n=32), 3
    out = BatchAugment(flip=0.0, pad=pad, erase=0.0)(images, torch.Generator().manual_seed(1))
    padded = v2.functional.pad(images, [pad] * 4, fill=0)
    offsets = []
    for x, y in zip(padded, out, strict=True):
        found = [
            (t, s)
            for t in range(2 * pad + 1)
            for s in range(2 * pad + 1)
            if torch.allclose(eval_transform()(x[:, t : t + 16, s : s + 8]), y)
        ]
        assert found, "an output that is no crop of the padded image"
        offsets.append(found[0])
    assert len(set(offsets)) > 8  # drawn per image, not once per batch


def test_erasing_paints_one_box_of_the_value_per_image():
    images = _images(n=16, h=32, w=16)
    augment = BatchAugment(flip=0.0, pad=0, erase=1.0, erase_value=(7.0, 7.0, 7.0))
    out = augment(images, torch.Generator().manual_seed(2))
    painted = (out == 7.0).all(dim=1)  # (N, H, W)
    areas = painted.sum(dim=(1, 2))
    assert (areas > 0).float().mean() > 0.8  # ten tries usually find a box that fits
    for box in painted[areas > 0]:
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a filled rectangle
    assert BatchAugment(erase=0.0)(images, torch.Generator().manual_seed(2)).ne(7.0).any()


def test_the_same_generator_state_gives_the_same_batch():
    images, augment = _images(n=8), BatchAugment(erase=0.5)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cached_batches_follow_the_sampler(tiny_market):
    data = read_dataset(tiny_market)
    sampler = PKBatchSampler([s.pid for s in data.train], 3, 2)
    images = decode_all(data.train, 64, 32)
    batches = CachedBatches(images, data.train, sampler, BatchAugment(), torch.Generator().manual_seed(0))
    plan = list(sampler)
    got = list(batches)
    assert len(got) == len(batches) == len(plan)
    for (x, pids, camids), indices in zip(got, plan, strict=True):
        assert x.shape == (6, 3, 64, 32) and x.dtype == torch.float32
        assert pids.tolist() == [data.train[i].pid for i in indices]
        assert camids.tolist() == [data.train[i].camid for i in indices]


def test_the_memory_budget_picks_the_path(tiny_market, tmp_path):
    rt = Runtime(0, 1, torch.device("cpu"), amp=False)
    base = [f"data_root={tiny_market}", "height=64", "width=32", "ids_per_batch=3", "images_per_id=2", "num_workers=0"]
    data = read_dataset(tiny_market)
    assert build_train_data(load_config(None, base), data, rt).cached
    assert not build_train_data(load_config(None, [*base, "cache_mb=0"]), data, rt).cached


@pytest.mark.parametrize(("name", "train_images"), [("market1501", 12_936), ("duke", 16_522), ("msmt17", 30_248)])
def test_the_full_recipes_keep_the_loader_with_workers(name, train_images):
    """Their training sets at 384x192 exceed the default budget, so their input path is the DataLoader's, as before."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cache_bytes(train_images, cfg.height, cfg.width) > cfg.cache_mb * 2**20 and cfg.num_workers > 0
