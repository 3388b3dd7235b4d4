"""Installs per stage: the client extra alone gives a working `reid` and `import client`, without torch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")
HEAVY = ["torch", "torchvision", "faiss", "onnxruntime", "tritonclient", "fastapi"]


@pytest.mark.slow
def test_client_extra_installs_without_torch(tmp_path):
    env_dir = tmp_path / "client-env"
    subprocess.run([str(UV), "venv", "-q", "-p", sys.executable, str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    install = [str(UV), "pip", "install", "-q", "--python", str(python), "-c", str(ROOT / "requirements.lock")]
    subprocess.run([*install, f"{ROOT}[client]"], check=True, timeout=900, cwd=tmp_path)

    frozen = subprocess.run([str(UV), "pip", "freeze", "--python", str(python)], capture_output=True, text=True)
    # "name==version", or "name @ file:///..." for the project itself
    installed = {re.split(r"==| @ ", line)[0].strip().lower() for line in frozen.stdout.splitlines()}
    assert "httpx" in installed and "apnet-reid" in installed
    assert not installed & {"torch", "torchvision", "faiss-cpu", "onnxruntime", "tritonclient", "fastapi"}

    help_text = subprocess.run([str(env_dir / "bin" / "reid"), "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert "search" in help_text.stdout and "index" in help_text.stdout

    code = f"import sys, client; print(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r}))"
    loaded = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
