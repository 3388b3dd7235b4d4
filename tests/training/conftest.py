"""A tiny Market-1501-layout folder for the training tests (the shared synth_data fixture is larger)."""

from pathlib import Path

import cv2
import numpy as np
import pytest


def write_market(root: Path, train_ids: int = 6, test_ids: int = 4, shots: int = 2, seed: int = 0) -> Path:
    """Each person is a vertical two-colour block pattern plus noise, seen by two cameras."""
    rng = np.random.default_rng(seed)
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / split).mkdir(parents=True, exist_ok=True)

    def person(pid: int) -> np.ndarray:
        colours = np.random.default_rng(1000 + pid).integers(0, 255, (2, 3))
        img = np.empty((64, 32, 3), np.float32)
        img[:32], img[32:] = colours[0], colours[1]
        return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)

    for pid in range(1, train_ids + 1):
        for cam in (1, 2):
            for shot in range(shots):
                cv2.imwrite(str(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{shot:06d}_00.jpg"), person(pid))
    for pid in range(100, 100 + test_ids):
        cv2.imwrite(str(root / "query" / f"{pid:04d}_c1s1_000000_00.jpg"), person(pid))
        for shot in range(shots):
            cv2.imwrite(str(root / "bounding_box_test" / f"{pid:04d}_c2s1_{shot:06d}_00.jpg"), person(pid))
    cv2.imwrite(str(root / "bounding_box_test" / "0000_c1s1_000009_00.jpg"), person(0))  # a distractor
    return root


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    return write_market(tmp_path_factory.mktemp("data") / "market1501")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test: the machine is shared, and results must not depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
