"""Data set readers (Market, Duke, MSMT17 lists), the P x K sampler and the transforms, on tiny folders."""

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from formats.images import load_image
from training.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from training.data import (
    ImageDataset,
    PKBatchSampler,
    eval_transform,
    parse_market_name,
    read_dataset,
    train_transform,
)


def _write(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (40, 20, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)


def _market(root: Path) -> Path:
    for name in ["0007_c1s1_000001_00.jpg", "0007_c2s1_000002_00.jpg", "0003_c1s1_000003_00.jpg", "-1_c1s1_0_00.jpg"]:
        _write(root / "bounding_box_train" / name)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")
    _write(root / "query" / "0010_c1s1_000010_00.jpg")
    for name in ["0010_c2s1_000011_00.jpg", "0000_c3s1_000012_00.jpg", "-1_c1s1_000013_00.jpg"]:
        _write(root / "bounding_box_test" / name)
    return root


def test_market_layout_drops_junk_keeps_distractors_and_relabels(tmp_path):
    data = read_dataset(_market(tmp_path / "market1501"))
    assert data.name == "market1501"
    assert sorted((s.pid, s.camid) for s in data.train) == [(0, 0), (1, 0), (1, 1)]  # 3 -> 0, 7 -> 1
    assert data.num_train_pids == 2
    assert [(s.pid, s.camid) for s in data.query] == [(10, 0)]
    assert sorted((s.pid, s.camid) for s in data.gallery) == [(0, 2), (10, 1)]


def test_the_seeds_datasets_folder_and_duke_names(tmp_path):
    root = tmp_path / "Datasets" / "duke"
    for name in ["0005_c2_f0046985.jpg", "0005_c3_f0046999.jpg"]:
        _write(root / "bounding_box_train" / name)
    _write(root / "query" / "0011_c1_f0000001.jpg")
    _write(root / "bounding_box_test" / "0011_c5_f0000002.jpg")
    data = read_dataset(tmp_path / "Datasets", "duke")
    assert data.name == "duke" and data.root == root
    assert sorted(s.camid for s in data.train) == [1, 2]
    assert parse_market_name("0005_c2_f0046985.jpg") == (5, 1)


def test_msmt17_list_files(tmp_path):
    root = tmp_path / "msmt17"
    _write(root / "train" / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    _write(root / "train" / "0001" / "0001_000_05_0303morning_0016_0.jpg")
    _write(root / "test" / "0000" / "0000_000_02_0303noon_0001_0.jpg")
    _write(root / "test" / "0000" / "0000_001_07_0303noon_0002_0.jpg")
    (root / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (root / "list_val.txt").write_text("0001/0001_000_05_0303morning_0016_0.jpg 1\n")
    (root / "list_query.txt").write_text("0000/0000_000_02_0303noon_0001_0.jpg 0\n")
    (root / "list_gallery.txt").write_text("0000/0000_001_07_0303noon_0002_0.jpg 0\n")
    data = read_dataset(root)
    # MSMT17's label 0 is a real person (not a distractor): it is kept. Train is list_train.txt alone, as the
    # authors train; msmt_train_val adds list_val.txt (relabelled with it).
    assert [(s.pid, s.camid) for s in data.train] == [(0, 0)]
    with_val = read_dataset(root, msmt_train_val=True)
    assert sorted((s.pid, s.camid) for s in with_val.train) == [(0, 0), (1, 4)]
    assert with_val.query == data.query and with_val.gallery == data.gallery
    assert [s.camid for s in data.query] == [1] and [s.camid for s in data.gallery] == [6]
    assert data.query[0].pid == data.gallery[0].pid > 0
    assert all(Path(s.path).is_file() for s in data.train + data.query + data.gallery)
    (root / "list_query.txt").write_text("only-one-field\n")
    with pytest.raises(ValueError, match="list_query.txt:1"):
        read_dataset(root)


def test_missing_and_malformed_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        read_dataset(tmp_path / "empty")
    root = _market(tmp_path / "m")
    (root / "query" / "0010_c1s1_000010_00.jpg").unlink()
    (root / "query").rmdir()
    with pytest.raises(FileNotFoundError, match="missing \\['query'\\]"):
        read_dataset(root)
    root = _market(tmp_path / "m2")
    _write(root / "query" / "person7.jpg")
    with pytest.raises(ValueError, match="malformed image name 'person7.jpg'"):
        read_dataset(root)


def test_pk_sampler_batches_p_identities_of_k_images():
    pids = [i // 5 for i in range(5 * 12)] + [99, 99]  # 12 ids x 5 images, and one id with only 2
    sampler = PKBatchSampler(pids, p=4, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) >= 3
    for batch in batches:
        counts = Counter(pids[i] for i in batch)
        assert len(batch) == 16 and len(counts) == 4 and set(counts.values()) == {4}
    first = [b[:] for b in sampler]
    assert first == batches  # deterministic for a seed and epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ranks = [list(PKBatchSampler(pids, 4, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert (
        len(ranks[0]) == len(ranks[1]) and ranks[0] and not {tuple(b) for b in ranks[0]} & {tuple(b) for b in ranks[1]}
    )
    with pytest.raises(ValueError, match="needs 20 identities"):
        PKBatchSampler(pids, p=20, k=4)


def test_eval_pixels_are_the_servers_pixels_normalised(tmp_path):
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    _write(path, seed=5)
    from training.data import Sample

    image, pid, camid = ImageDataset([Sample(str(path), 1, 0)], 32, 16, eval_transform())[0]
    rgb = load_image(str(path), 32, 16).astype(np.float32) / 255
    expected = (rgb - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    assert image.shape == (3, 32, 16) and (pid, camid) == (1, 0)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_train_transform_keeps_the_size_and_augments():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 16), dtype=torch.uint8)
    transform = train_transform(32, 16)
    outputs = [transform(image) for _ in range(8)]
    assert all(o.shape == (3, 32, 16) and o.dtype == torch.float32 for o in outputs)
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])
    plain = train_transform(32, 16, flip=0.0, pad=0, erase=0.0)(image)
    assert torch.allclose(plain, eval_transform()(image))


def test_random_erasing_fills_with_the_configured_value():
    image = torch.full((3, 32, 16), 128, dtype=torch.uint8)
    plain = eval_transform()(image)
    authors = (0.485, 0.456, 0.406)  # the authors write these numbers into the normalised tensor
    for value in [(0.0, 0.0, 0.0), authors]:
        torch.manual_seed(0)
        erased = train_transform(32, 16, flip=0.0, pad=0, erase=1.0, erase_value=value)(image)
        changed = (erased != plain).any(dim=0)
        assert changed.any()
        for c in range(3):
            assert torch.allclose(erased[c][changed], torch.tensor(value[c]))
