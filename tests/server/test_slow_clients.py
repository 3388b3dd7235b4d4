"""Slow, stalled and greedy clients over real sockets against uvicorn (configured as ``python -m server`` does):
uploads in progress hold no in-flight slot, so searches keep answering while uploads stall; a stalled body gets
408 and its connection closed after the body deadline; a slow but steady upload within the deadline succeeds; a
request head that does not arrive is cut off; one address gets a bounded number of connections; and nothing is
left open afterwards (file descriptors of this process, uvicorn's connections, the server loop's tasks).

Stalled clients are raw sockets that send a head with Content-Length and part of the body, then nothing.
Outcomes are asserted (statuses, bodies, closed connections), never latencies.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import yaml

from server.settings import Settings
from tests.deploy.nginxconf import NGINX_CONF, nginx_directives
from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")

ROOT = NGINX_CONF.parents[3]
CROPS = person_crops(4, seed=7)
BOUNDARY = "reid-slow-client-test"
WAIT_S = 60  # how long a poll for a server-side outcome may take on a busy machine before the test gives up


def multipart_image(image: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def head(path: str, body_length: int, request_id: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {request_id}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {body_length}\r\n\r\n"
    ).encode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)


def stalled_upload(port: int, request_id: str) -> socket.socket:
    """A search upload that sends its head and half its body, then stalls."""
    body = multipart_image(CROPS[0])
    sock = connect(port)
    sock.sendall(head("/v1/search", len(body), request_id) + body[: len(body) // 2])
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF, or a reset when it closed with bytes unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def answered_yet(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _socket_ports() -> dict[str, set[int]]:
    """socket inode -> its local and remote TCP ports, from /proc/net/tcp and tcp6."""
    ports: dict[str, set[int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                ports[fields[9]] = {int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)}
    return ports


def open_fds(live: LiveServer, folder: str) -> int:
    """This process's descriptors that the server could leak: sockets to or from its port, files of its gallery.
    Other descriptors are left out: earlier tests' clients (a Milvus channel retrying, say) may open and close
    sockets in the background of this one."""
    ports, count = _socket_ports(), 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            count += live.port in ports.get(target[8:-1], set())
        else:
            count += target.startswith(str(folder))
    return count


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


@contextmanager
def nothing_left_open(live: LiveServer) -> Iterator[None]:
    """Asserts that the block leaves this process's descriptors and the server's connections and tasks as it found
    them (once the server has closed what the block's clients closed)."""
    wait_until(lambda: live.open_work()[0] == 0, "the server closed the setup's connections")
    folder = live.app.state.resources.settings.gallery_location
    fds, (_, tasks) = open_fds(live, folder), live.open_work()
    yield
    wait_until(lambda: live.open_work() == (0, tasks), f"connections back to 0 and tasks back to {tasks}")
    wait_until(lambda: open_fds(live, folder) == fds, f"descriptors back to {fds}")


def search_finds(client: httpx.Client, index: int) -> None:
    r = client.post("/v1/search", files={"image": CROPS[index]}, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    assert r.json()["identities"][0]["person_id"] == f"p{index}"


def check_408(sock: socket.socket, request_id: str) -> None:
    status, headers, body = read_response(sock)
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": {"code": "request_timeout", "message": "the request body did not arrive within 2 s"},
        "request_id": request_id,
    }
    assert headers["x-request-id"] == request_id
    assert closed_by_server(sock)


@pytest.fixture
def live_server(tmp_path) -> Iterator[LiveServer]:
    """max_in_flight 2 and a 2 s body deadline; the gallery holds the four crops as people p0..p3."""
    settings = gallery_settings(tmp_path / "gallery", max_in_flight=2, body_timeout_s=2.0)
    live = LiveServer(settings, embedder=FakeEmbedder())
    with live as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        r = client.post(
            "/v1/gallery", files=[("images", c) for c in CROPS], data={"person_id": ["p0", "p1", "p2", "p3"]}
        )
        assert r.status_code == 201, r.text
        client.close()
        yield live


def test_stalled_uploads_hold_no_slot_and_get_408_while_searches_answer(live_server):
    live = live_server
    stalled_count = 6  # three times the in-flight bound
    with nothing_left_open(live):
        tasks_before = live.open_work()[1]
        stalled = [stalled_upload(live.port, f"stalled-{i}") for i in range(stalled_count)]
        try:
            # Every stalled request is in the app, parked on its body (a task each), before the searches start
            # (or has been answered already, which the assertions below catch).
            wait_until(
                lambda: live.open_work()[1] >= tasks_before + stalled_count or any(answered_yet(s) for s in stalled),
                "the stalled requests started",
            )
            with httpx.Client(base_url=live.url, timeout=WAIT_S) as client:
                for i in range(len(CROPS)):
                    search_finds(client, i)
                # As many at once as the in-flight bound allows: none is refused for the uploads in progress.
                statuses: list[int] = []

                def search() -> None:
                    statuses.append(client.post("/v1/search", files={"image": CROPS[1]}).status_code)

                threads = [threading.Thread(target=search) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert statuses == [200, 200]
                assert client.get("/healthz").status_code == 200
            # The searches ran while every upload was still stalled (none has been answered yet).
            assert not any(answered_yet(s) for s in stalled)
            for i, sock in enumerate(stalled):
                check_408(sock, f"stalled-{i}")
        finally:
            for sock in stalled:
                sock.close()
    with httpx.Client(base_url=live.url, timeout=WAIT_S) as client:
        metrics = client.get("/metrics").text
    assert f'reid_http_requests_total{{method="POST",route="/v1/search",status="408"}} {stalled_count}.0' in metrics


def test_a_slow_steady_upload_within_the_deadline_succeeds(live_server):
    live = live_server
    body = multipart_image(CROPS[3])
    with nothing_left_open(live):
        with connect(live.port) as sock:
            sock.sendall(head("/v1/search", len(body), "slow-but-steady"))
            pieces = 8
            step = -(-len(body) // pieces)
            for start in range(0, len(body), step):  # about 0.4 s in all, well inside the 2 s deadline
                time.sleep(0.05)
                sock.sendall(body[start : start + step])
            status, headers, answer = read_response(sock)
            assert status == 200, answer
            assert json.loads(answer)["identities"][0]["person_id"] == "p3"
            assert headers["x-request-id"] == "slow-but-steady"
            # The connection stays usable: the next request on it is answered too.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200


def test_a_request_head_that_does_not_arrive_is_cut_off(tmp_path):
    settings = gallery_settings(tmp_path / "gallery", header_timeout_s=0.5)
    live = LiveServer(settings, embedder=FakeEmbedder())
    with live, nothing_left_open(live):
        silent = connect(live.port)  # connects and says nothing
        partial = connect(live.port)
        partial.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        idle = connect(live.port)  # one full exchange, then a partial next head on the same connection
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(idle)[0] == 200
        idle.sendall(b"GET /healthz HTTP/1.1\r\n")
        for sock in (silent, partial, idle):
            with sock:
                assert closed_by_server(sock)


def test_connections_per_client_address_are_bounded(tmp_path):
    settings = gallery_settings(tmp_path / "gallery", max_connections_per_client=3, body_timeout_s=2.0)
    live = LiveServer(settings, embedder=FakeEmbedder())
    with live, nothing_left_open(live):
        stalled = [stalled_upload(live.port, f"held-{i}") for i in range(3)]
        try:
            wait_until(lambda: live.open_work()[0] == 3, "the server accepted the three connections")
            with connect(live.port) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: over\r\n\r\n")
                status, headers, body = read_response(extra)
                assert status == 429 and headers["connection"] == "close"
                assert json.loads(body) == {
                    "error": {"code": "too_many_requests", "message": "too many open connections from this address"},
                    "request_id": "over",
                }
                assert closed_by_server(extra)
            # The held connections were not disturbed by the refusal; once they are gone the address may connect.
            for i, sock in enumerate(stalled):
                check_408(sock, f"held-{i}")
        finally:
            for sock in stalled:
                sock.close()
        wait_until(lambda: live.open_work()[0] == 0, "the server closed the held connections")
        with httpx.Client(base_url=live.url, timeout=WAIT_S) as client:
            assert client.get("/healthz").status_code == 200


def test_deployments_behind_nginx_leave_the_per_client_limit_to_it_and_keep_alive_in_order():
    """Behind the nginx front every client shares nginx's address, so the API's per-client connection limit is off
    there and nginx's limit_conn applies; nginx drops idle upstream connections before the API would."""
    conf = NGINX_CONF.read_text()
    assert nginx_directives(conf)["limit_conn"], "nginx limits connections per client address"
    compose = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())["services"]["api"]["environment"]
    assert compose["REID_MAX_CONNECTIONS_PER_CLIENT"] == "0"
    api_env = (ROOT / "deploy" / "k8s" / "base" / "api.env").read_text().splitlines()
    assert "REID_MAX_CONNECTIONS_PER_CLIENT=0" in api_env
    upstream = re.search(r"upstream\s+\S+\s*\{(.*?)\}", conf, flags=re.S).group(1)
    idle = nginx_directives(upstream)["keepalive_timeout"][0]
    assert idle.endswith("s") and float(idle[:-1]) < Settings().keep_alive_s
