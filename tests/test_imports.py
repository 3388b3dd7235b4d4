"""Every package imports, and the serving side stays free of torch and training code."""

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["formats", "training", "export", "embedders", "index", "ingestion", "server", "client", "benchmarks"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_imports(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no docstring saying what it holds"


# Every module of these packages (entry points aside) must load without torch or the training package.
SERVING_MODULES = ["formats", "embedders", "index", "ingestion", "server", "client"]


@pytest.mark.parametrize("name", SERVING_MODULES)
def test_serving_side_does_not_import_torch(name):
    code = (
        "import sys, importlib, pkgutil\n"
        f"pkg = importlib.import_module({name!r})\n"
        "for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if info.name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'training'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {name} loaded {out.stdout.strip()}"


def _loaded_after(statement: str, roots: set[str]) -> list[str]:
    code = f"import sys\n{statement}\nprint(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_client_loads_no_model_runtime_or_index():
    assert _loaded_after("import client, client.cli", {"torch", "faiss", "onnxruntime", "server", "cv2"}) == []


def test_server_app_loads_no_torch():
    assert _loaded_after("import server.main", {"torch", "torchvision", "training", "export"}) == []
