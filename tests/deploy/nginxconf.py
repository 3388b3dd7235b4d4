"""Reading the shared nginx config (deploy/k8s/base/nginx.conf) the way the deployment tests need."""

from __future__ import annotations

import re
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "nginx.conf"


def nginx_directives(text: str) -> dict[str, list[str]]:
    """Directive name -> the values it is given anywhere in the config (comments stripped, one per line)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";") and not line.startswith(("'", '"')):
            name, _, value = line[:-1].partition(" ")
            out.setdefault(name, []).append(value.strip())
    return out


def nginx_size(value: str) -> int:
    """nginx's size syntax (8m, 256k, 1024) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def upstream_servers(text: str) -> list[str]:
    """host:port of every server in the config's upstream blocks."""
    return [v.split()[0] for v in nginx_directives(text).get("server", [])]
