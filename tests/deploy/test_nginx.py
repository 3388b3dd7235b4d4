"""The nginx front (deploy/k8s/base/nginx.conf, also docker/compose.yml's), run for real on loopback in front of a
stand-in API that records what reaches it: bodies arrive only once complete, the API's upload limit holds, stalled
uploads never reach the API, errors use the API's schema.

The config is adapted only where a test host differs from a pod: the upstream and listen addresses, the scratch
folder instead of /tmp, and (for one test) a 1 s body timeout instead of 10 s. Skipped where nginx is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from server.settings import Settings
from tests.deploy.nginxconf import NGINX_CONF, nginx_directives

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")

LIMIT = Settings().max_upload_bytes


@dataclass
class Seen:
    """One request as the stand-in API saw it: when its head arrived, and its body."""

    method: str
    path: str
    headers: dict[str, str]
    head_at: float
    body: bytes = b""


@dataclass
class StandInAPI:
    port: int
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[StandInAPI]:
    state = StandInAPI(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            record = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
            record.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.seen.append(record)
            body = json.dumps({"ok": True, "bytes": len(record.body)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer()

        def do_POST(self) -> None:  # noqa: N802
            self._answer()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adapted(conf: str, *, upstream_port: int, listen_port: int, scratch: str, body_timeout: str | None) -> str:
    """The shared config with a test host's addresses; each change must match exactly where expected."""

    def swap(text: str, old: str, new: str, count: int = 1) -> str:
        assert text.count(old) == count, f"nginx.conf no longer has {count} x {old!r}"
        return text.replace(old, new)

    conf = swap(conf, "server reid-api:8000;", f"server 127.0.0.1:{upstream_port};")
    conf = swap(conf, "listen 8080;", f"listen 127.0.0.1:{listen_port};")
    conf = swap(conf, " /tmp/", f" {scratch}/", count=6)  # the pid file and five temporary-file folders
    if body_timeout is not None:
        conf = swap(conf, "client_body_timeout 10s;", f"client_body_timeout {body_timeout};")
    return conf


@contextlib.contextmanager
def running_nginx(upstream_port: int, *, body_timeout: str | None = None) -> Iterator[str]:
    """nginx in the foreground on a free loopback port; yields its base URL."""
    scratch = tempfile.mkdtemp(prefix="reid-nginx-")
    os.chmod(scratch, 0o777)  # workers run as an unprivileged user when the tests run as root
    port = free_port()
    conf_path = Path(scratch) / "nginx.conf"
    conf_path.write_text(
        adapted(
            NGINX_CONF.read_text(),
            upstream_port=upstream_port,
            listen_port=port,
            scratch=scratch,
            body_timeout=body_timeout,
        )
    )
    log = open(Path(scratch) / "nginx.log", "wb")  # noqa: SIM115 (closed below, after nginx exits)
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf_path), "-p", scratch, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited: {(Path(scratch) / 'nginx.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("nginx did not start listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)


def raw_request(url: str, path: str, length: int, extra: str = "") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: reid\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n"
    )
    sock.sendall((head + extra + "\r\n").encode())
    return sock


def read_response(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        if b"\r\n\r\n" in b"".join(chunks):
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.I)
            if length and len(body) >= int(length.group(1)):
                break
    return b"".join(chunks)


def test_the_config_is_valid_nginx(api, tmp_path):
    conf = tmp_path / "nginx.conf"
    scratch = tempfile.mkdtemp(prefix="reid-nginx-")
    try:
        conf.write_text(
            adapted(
                NGINX_CONF.read_text(),
                upstream_port=api.port,
                listen_port=free_port(),
                scratch=scratch,
                body_timeout=None,
            )
        )
        run = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", scratch], capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert run.returncode == 0, run.stderr


def test_a_body_reaches_the_api_only_once_it_is_complete(api):
    with running_nginx(api.port) as url:
        sock = raw_request(url, "/v1/search", 2000)
        sock.sendall(b"a" * 1000)
        time.sleep(0.5)  # an unbuffered proxy would pass the head on now
        assert not api.seen, "the API saw a request whose body had not arrived"
        completed_at = time.monotonic()
        sock.sendall(b"b" * 1000)
        response = read_response(sock)
        sock.close()
    assert response.startswith(b"HTTP/1.1 200")
    [seen] = api.seen
    assert seen.head_at >= completed_at, "the API got the request before its body was complete"
    assert seen.body == b"a" * 1000 + b"b" * 1000


def test_the_api_upload_limit_holds_at_the_proxy(api):
    with running_nginx(api.port) as url, httpx.Client(base_url=url, timeout=30) as client:
        at_limit = client.post("/v1/gallery", content=b"x" * LIMIT)
        over = client.post("/v1/gallery", content=b"x" * (LIMIT + 1), headers={"X-Request-ID": "over-1"})
    assert at_limit.status_code == 200 and at_limit.json()["bytes"] == LIMIT
    assert over.status_code == 413
    assert over.json() == {
        "error": {"code": "payload_too_large", "message": f"request body larger than {LIMIT} bytes"},
        "request_id": "over-1",
    }
    assert over.headers["x-request-id"] == "over-1"
    assert [len(s.body) for s in api.seen] == [LIMIT]


def test_a_stalled_upload_is_cut_off_and_never_reaches_the_api(api):
    with running_nginx(api.port, body_timeout="1s") as url, httpx.Client(base_url=url, timeout=30) as client:
        stalled = raw_request(url, "/v1/search", 5000)
        stalled.sendall(b"x" * 100)
        # While it stalls, other clients are served.
        assert client.get("/v1/gallery").status_code == 200
        assert read_response(stalled) == b"", "nginx answered a stalled upload instead of closing it"
        stalled.close()
    assert [s.path for s in api.seen] == ["/v1/gallery"]


def test_open_uploads_per_client_are_capped_with_the_api_error_schema(api):
    cap = int(nginx_directives(NGINX_CONF.read_text())["limit_conn"][0].split()[1])
    with running_nginx(api.port) as url:
        held = [raw_request(url, "/v1/search", 10) for _ in range(cap)]
        try:
            # nginx counts a connection once its head is read: the sockets above are all counted when a
            # request on one more connection is answered 429 (that one waits until they are).
            for _ in range(300):  # up to ~30 s on a loaded host
                extra = raw_request(url, "/v1/search", 1)
                extra.sendall(b"x")
                response = read_response(extra)
                extra.close()
                if b" 429 " in response.split(b"\r\n", 1)[0]:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"no 429 with {cap} uploads open from one address")
            body = json.loads(response.partition(b"\r\n\r\n")[2])
            assert body["error"]["code"] == "too_many_requests"
        finally:
            for sock in held:
                sock.close()
    assert all(s.body == b"x" for s in api.seen), "a held upload reached the API"


def test_request_ids_pass_through_when_sane_and_are_replaced_otherwise(api):
    with running_nginx(api.port) as url, httpx.Client(base_url=url, timeout=30) as client:
        client.get("/v1/gallery", headers={"X-Request-ID": "cam-7.frame_12"})
        client.get("/v1/gallery", headers={"X-Request-ID": 'x", "injected": "1'})
        refused = client.post("/v1/search", content=b"x" * (LIMIT + 1), headers={"X-Request-ID": 'a"b'})
    assert api.seen[0].headers["x-request-id"] == "cam-7.frame_12"
    assert re.fullmatch(r"[0-9a-f]{32}", api.seen[1].headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", refused.json()["request_id"]), "a client's id broke the error body"


def test_metrics_stay_off_the_public_entry(api):
    with running_nginx(api.port) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/nginx-healthz").text == "ok\n"
    assert api.seen == []


def test_an_unreachable_api_is_a_503_with_retry_after():
    with running_nginx(free_port()) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.get("/v1/gallery")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "unavailable"
