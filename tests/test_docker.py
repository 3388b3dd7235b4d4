"""Static checks of docker/ (no Docker engine here): the files agree with the code they package."""

import re
from pathlib import Path

import yaml

from server.settings import Settings
from tests.deploy.nginxconf import NGINX_CONF, nginx_directives, nginx_size, upstream_servers

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
    # Both through `python -m server`, the one launcher that applies the deadlines and connection limits.
    text = (DOCKER / "server.Dockerfile").read_text()
    assert '"python", "-m", "server"' in text
    assert "$(PY) -m server --host" in (ROOT / "Makefile").read_text()


def test_compose_fronts_the_api_with_the_buffering_nginx_of_the_kubernetes_manifests():
    services = yaml.safe_load((DOCKER / "compose.yml").read_text())["services"]
    nginx, api = services["nginx"], services["api"]
    # One config file for both deployments, mounted read-only where the official image reads it.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert (DOCKER / mounts["/etc/nginx/nginx.conf"]).resolve() == NGINX_CONF
    conf = NGINX_CONF.read_text()
    directives = nginx_directives(conf)
    assert directives["proxy_request_buffering"] == ["on"]

    # The same pinned image as the Kubernetes proxy.
    proxy = next(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "proxy.yaml").read_text()))
    k8s_image = proxy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert nginx["image"] == k8s_image
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+(-\w+)?", nginx["image"]), f"{nginx['image']} is not pinned"

    # nginx reaches the API by a name the API answers to, on the port it listens on; only nginx is published.
    host, port = upstream_servers(conf)[0].split(":")
    assert host in {"api", *api["networks"]["default"]["aliases"]}
    assert "ports" not in api and port in api["expose"]
    listen = directives["listen"][0]
    assert [p.split(":")[-1] for p in nginx["ports"]] == [listen]

    # Unprivileged on a read-only root: nginx.conf writes only under /tmp.
    assert nginx["read_only"] is True and not nginx["user"].startswith("0")
    assert "/tmp" in nginx["tmpfs"]
    assert all(path.startswith("/tmp/") for path in directives["pid"] + directives["client_body_temp_path"])

    # Bodies above the API's upload limit are refused by nginx with the same limit.
    limit = int(api["environment"].get("REID_MAX_UPLOAD_BYTES", Settings().max_upload_bytes))
    assert nginx_size(directives["client_max_body_size"][0]) == limit
