"""The Python client: request building and error mapping against httpx.MockTransport, then the real thing
(sync, async and the `reid` CLI) against the live server with the tiny exported model."""

import asyncio
import json

import httpx
import pytest

from client import (
    AsyncReIDClient,
    BadGateway,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ReIDClient,
    ReIDError,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from client.cli import main
from server.settings import Settings
from tests.support import LiveServer, person_crops

SEARCH_ANSWER = {
    "model_id": "m1",
    "verdict": "match",
    "threshold": 0.5,
    "identities": [{"person_id": "7", "score": 0.9, "count": 2, "best_id": 3}],
    "hits": [
        {"id": 3, "score": 0.9, "person_id": "7", "camera_id": "1", "metadata": {"a": 1}, "new_field": "ignored"},
        {"id": 4, "score": 0.8, "person_id": "7", "camera_id": "2"},
    ],
    "timings": {"decode_ms": 1.0, "embed_ms": 2.0, "search_ms": 0.5},
}


def error_body(code: str, message: str = "nope") -> dict:
    return {"error": {"code": code, "message": message}, "request_id": "req-1"}


def test_search_sends_a_multipart_form_and_parses_the_answer():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["key"], seen["body"] = request.url.path, request.headers.get("x-api-key"), request.read()
        return httpx.Response(200, json=SEARCH_ANSWER)

    with ReIDClient("http://reid", api_key="k1", transport=httpx.MockTransport(handler)) as reid:
        result = reid.search(b"\xff\xd8image-bytes", top_k=5, cameras=["1", "2"], query_camera="3")
    assert seen["path"] == "/v1/search" and seen["key"] == "k1"
    body = seen["body"]
    assert b"image-bytes" in body and body.count(b'name="cameras"') == 2 and b'name="query_camera"' in body
    assert b'name="time_from"' not in body  # unset options are not sent
    assert result.verdict == "match" and result.identities[0].person_id == "7"
    assert [h.id for h in result.hits] == [3, 4] and result.hits[0].metadata == {"a": 1}
    assert result.timings.search_ms == 0.5


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (401, Unauthorized, "unauthorized"),
        (403, Forbidden, "forbidden"),
        (404, NotFound, "not_found"),
        (413, PayloadTooLarge, "payload_too_large"),
        (415, UnsupportedMediaType, "unsupported_media_type"),
        (422, Unprocessable, "invalid_parameters"),
        (503, Unavailable, "overloaded"),
    ],
)
def test_error_statuses_become_their_exceptions(status, cls, code):
    headers = {"Retry-After": "2"} if status == 503 else {}
    transport = httpx.MockTransport(lambda r: httpx.Response(status, json=error_body(code), headers=headers))
    with ReIDClient("http://reid", transport=transport) as reid, pytest.raises(cls) as err:
        reid.get(1)
    assert isinstance(err.value, ReIDError)
    assert (err.value.status, err.value.code, err.value.message, err.value.request_id) == (
        status,
        code,
        "nope",
        "req-1",
    )
    if status == 503:
        assert err.value.retry_after == 2.0


def test_a_proxy_error_page_and_a_dead_server_are_still_typed():
    transport = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with ReIDClient("http://reid", transport=transport) as reid, pytest.raises(BadGateway) as err:
        reid.stats()
    assert "bad gateway" in err.value.message

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with ReIDClient("http://reid", transport=httpx.MockTransport(refuse)) as reid, pytest.raises(ConnectionFailed):
        reid.health()


def test_readiness_is_an_answer_not_an_error():
    transport = httpx.MockTransport(lambda r: httpx.Response(503, json=error_body("not_ready", "gallery mismatch")))
    with ReIDClient("http://reid", transport=transport) as reid:
        readiness = reid.ready()
    assert readiness.ready is False and readiness.reason == "gallery mismatch"


def test_async_client_builds_the_same_requests():
    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        assert request.url.path == "/v1/gallery" and body.count(b'name="images"') == 2
        assert body.count(b'name="person_id"') == 1 and b'{"site": "x"}' in body
        return httpx.Response(
            201,
            json={
                "model_id": "m1",
                "ids": [5, 5],
                "items": [{"index": 0, "id": 5, "duplicate": False}, {"index": 1, "id": 5, "duplicate": True}],
                "added": 1,
                "duplicates": 1,
            },
        )

    async def run():
        async with AsyncReIDClient("http://reid", transport=httpx.MockTransport(handler)) as reid:
            return await reid.add([b"a", b"a"], "7", metadata={"site": "x"})

    result = asyncio.run(run())
    assert result.ids == [5, 5] and result.items[1].duplicate and result.added == 1


# Against the real server.

ADMIN, READER = "client-admin", "client-read"
CROPS = person_crops(4, seed=11)


@pytest.fixture(scope="module")
def server_url(tiny_artifact, tmp_path_factory):
    settings = Settings(
        backend="onnx",
        artifact=tiny_artifact,
        gallery_dir=tmp_path_factory.mktemp("client") / "gallery",
        create_gallery=True,
        admin_keys=ADMIN,
        read_keys=READER,
        _env_file=None,
    )
    with LiveServer(settings) as url:
        yield url


def test_sync_client_round_trip(server_url):
    with ReIDClient(server_url, api_key=ADMIN) as reid:
        added = reid.add(CROPS[:2], ["a", "b"], camera_id="1", metadata=[{"n": 0}, {"n": 1}])
        assert added.added == 2 and len(set(added.ids)) == 2
        result = reid.search(CROPS[1], top_k=2)
        assert result.hits[0].id == added.ids[1] and result.identities[0].person_id == "b"
        assert reid.get(added.ids[1]).metadata == {"n": 1}
        assert len(reid.embed(CROPS[0]).vector) == reid.stats().dim
        assert reid.health() and reid.ready().ready
        assert reid.delete(added.ids[0]) is True
        with pytest.raises(NotFound):
            reid.get(added.ids[0])
        with pytest.raises(UnsupportedMediaType):
            reid.search(b"not an image")
    with ReIDClient(server_url, api_key=READER) as reader, pytest.raises(Forbidden):
        reader.delete(added.ids[1])
    with ReIDClient(server_url) as anonymous, pytest.raises(Unauthorized):
        anonymous.stats()


def test_async_client_concurrent_searches(server_url):
    async def run():
        async with AsyncReIDClient(server_url, api_key=ADMIN) as reid:
            added = await reid.add(CROPS[2:4], ["c", "d"])
            results = await asyncio.gather(*(reid.search(CROPS[2 + i % 2], top_k=1) for i in range(6)))
            return added, results

    added, results = asyncio.run(run())
    assert [r.hits[0].id for r in results] == [added.ids[i % 2] for i in range(6)]


def test_cli_add_search_stats_rm_and_index(server_url, tmp_path, capsys):
    base = ["--url", server_url, "--api-key", ADMIN]
    crops = person_crops(3, seed=21)
    paths = []
    for i, data in enumerate(crops):
        paths.append(tmp_path / f"crop{i}.png")
        paths[-1].write_bytes(data)

    assert main([*base, "add", str(paths[0]), "--person", "cli-person", "--camera", "4"]) == 0
    new_id = int(capsys.readouterr().out.split()[0])

    assert main([*base, "search", str(paths[0]), "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "identities" in table and "cli-person" in table and str(new_id) in table

    assert main([*base, "search", str(paths[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == new_id

    folder = tmp_path / "market"
    folder.mkdir()
    (folder / "0042_c2s1_000100_01.png").write_bytes(crops[1])
    (folder / "-1_c1s1_000001_01.png").write_bytes(crops[2])  # junk in the Market protocol: skipped
    (folder / "notes.txt").write_text("not an image")
    assert main([*base, "index", str(folder)]) == 0
    assert "added 1, duplicates 0, junk 1, skipped 0, refused 0" in capsys.readouterr().out
    assert main([*base, "search", str(folder / "0042_c2s1_000100_01.png"), "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert (hit["person_id"], hit["camera_id"]) == ("0042", "2")

    assert main([*base, "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["ready"] is True and stats["count"] >= 2

    assert main([*base, "rm", str(new_id)]) == 0
    assert main([*base, "rm", str(new_id)]) == 1  # already gone: an error message, not a traceback
    assert "404 not_found" in capsys.readouterr().err


@pytest.mark.slow
def test_reid_serve_starts_the_api_from_the_environment(tiny_artifact, tmp_path):
    """`reid serve` runs `python -m server` with REID_* settings, as `make serve` does."""
    from client.launch import free_port, serve

    port = free_port()
    with serve(artifact=tiny_artifact, gallery=tmp_path / "gallery", port=port, wait_ready_s=120, create_gallery=True):
        with ReIDClient(f"http://127.0.0.1:{port}") as reid:
            added = reid.add(CROPS[0], "served")
            assert reid.search(CROPS[0]).hits[0].id == added.ids[0]
            assert reid.ready().backend == "onnx"
