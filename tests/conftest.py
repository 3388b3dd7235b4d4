"""Shared test settings: GPU tests skip cleanly on hosts without a CUDA device."""

import shutil
import subprocess

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


# Shared session fixtures live in tests/fixtures/; importing them here makes them visible to every test.
from tests.fixtures.artifact import *  # noqa: E402, F403
from tests.fixtures.data import *  # noqa: E402, F403
from tests.fixtures.triton import *  # noqa: E402, F403
