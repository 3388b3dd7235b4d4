"""Shared test settings and session fixtures.

GPU tests skip cleanly on hosts without a CUDA device. The session fixtures build, once per run, what the
end-to-end tests share: a small synthetic data set, a tiny checkpoint trained on it, its exported artifact and
a real local Triton serving that artifact. Heavy imports stay inside the fixtures, so collecting a test module
that needs none of them loads no torch.
"""

import shutil
import subprocess
from pathlib import Path

import pytest


def _has_cuda_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


HAS_GPU = _has_cuda_gpu()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (nvidia-smi finds none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny set: 4 train and 4 test identities over 3 cameras, 128x64 JPEGs (about 100 images)."""
    from training.synth import generate  # imported here so collecting server tests does not load cv2 drawing code

    out = tmp_path_factory.mktemp("synth") / "data"
    return generate(out, ids=8, cams=3, seed=0, height=128, width=64, workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synth_data) -> Path:
    """Trained for a few seconds on the gallery people of ``synth_data`` (their bounding_box_test crops, never their
    query crops), so that a held-out query of a gallery person finds that person: the closed-set case the API
    tests check end to end. Untrained weights would retrieve only exact copies."""
    import os

    import torch

    from tests.support import TINY_HEIGHT, TINY_THRESHOLD, TINY_WIDTH
    from training.checkpoint import update_meta
    from training.config import build_config
    from training.train import train

    root = tmp_path_factory.mktemp("tiny_train")
    (root / "bounding_box_train").mkdir()
    for crop in sorted((synth_data / "bounding_box_test").glob("*.jpg")):
        if not crop.name.startswith("0000_"):  # distractors have no identity to learn
            os.link(crop, root / "bounding_box_train" / crop.name)
    for split in ("query", "bounding_box_test"):
        (root / split).symlink_to(synth_data / split)
    cfg = build_config(
        {
            "data_root": str(root),
            "out_dir": str(root / "checkpoint"),
            "height": TINY_HEIGHT,
            "width": TINY_WIDTH,
            "backbone": "resnet18",
            "level": 2,
            "pretrained": "none",
            "ids_per_batch": 4,
            "images_per_id": 4,
            "erase_prob": 0.0,
            "lr": 2e-3,
            "epochs": 60,
            "warmup_epochs": 0,
            "milestones": [],
            "num_workers": 0,
            "threads": 1,
            "save_every": 0,
            "device": "cpu",
        }
    )
    threads = torch.get_num_threads()
    try:
        checkpoint = train(cfg)
    finally:
        torch.set_num_threads(threads)
    # A fixed threshold, so tests can predict the verdict from the scores they see.
    update_meta(checkpoint, threshold=dict(TINY_THRESHOLD), calibration=None)
    return checkpoint


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    import torch

    from export.artifact import build_artifact
    from export.config import ExportConfig
    from tests.support import TINY_NAME

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one core is what the ~30 s budget assumes
    try:
        out = tmp_path_factory.mktemp("artifacts") / TINY_NAME
        return build_artifact(tiny_checkpoint, out, ExportConfig(int8=False, threads=1))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_triton(tiny_artifact):
    """A LocalTriton on free ports hosting tiny_artifact, started once per test run."""
    from embedders.local_triton import LocalTriton

    with LocalTriton(tiny_artifact) as triton:
        yield triton
