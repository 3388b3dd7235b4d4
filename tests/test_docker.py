"""Static checks of docker/ (no Docker engine here): the files agree with the code they package."""

import re
from pathlib import Path

import yaml

from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def test_compose_passes_only_settings_the_server_reads():
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    env = compose["services"]["api"]["environment"]
    fields = set(Settings.model_fields)
    unknown = [name for name in env if name.removeprefix("REID_").lower() not in fields]
    assert not unknown, f"compose sets {unknown}, which server/settings.py does not read"
    assert env["REID_BACKEND"] == "triton"


def test_compose_serves_the_exported_model_repository_on_a_gpu():
    triton = yaml.safe_load((DOCKER / "compose.yml").read_text())["services"]["triton"]
    assert any(volume.endswith("/model_repository:/models:ro") for volume in triton["volumes"])
    assert "--model-repository=/models" in triton["command"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfiles_copy_paths_that_exist():
    for dockerfile in DOCKER.glob("*.Dockerfile"):
        for source in re.findall(r"^COPY\s+(\S+)\s+\S+", dockerfile.read_text(), flags=re.M):
            if source != ".":
                assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"


def test_server_image_starts_the_app_the_makefile_serves():
    text = (DOCKER / "server.Dockerfile").read_text()
    assert '"server.main:app"' in text
    assert "server.main:app" in (ROOT / "Makefile").read_text()
