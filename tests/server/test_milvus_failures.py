"""The API over a Milvus gallery (Milvus Lite here) when Milvus fails: a lost connection and a collection dropped
under the running server answer 503 with Retry-After in the one error schema, never a 500 or an empty answer; a
collection dropped between starts keeps the server unready until the operator allows an empty start."""

import httpx
import pytest
from pymilvus import MilvusClient, MilvusException

from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")

CROPS = person_crops(3, seed=5)


def lite_settings(tmp_path, **overrides):
    return gallery_settings(tmp_path / "unused", gallery_uri=str(tmp_path / "site.db"), **overrides)


def add_people(client: httpx.Client) -> list[int]:
    r = client.post("/v1/gallery", files=[("images", c) for c in CROPS], data={"person_id": ["p0", "p1", "p2"]})
    assert r.status_code == 201, r.text
    return r.json()["ids"]


def assert_unavailable(r: httpx.Response, code: str) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == code and r.json()["request_id"]
    assert int(r.headers["Retry-After"]) > 0


def test_a_lost_connection_answers_503_and_recovers_without_a_restart(tmp_path):
    live = LiveServer(lite_settings(tmp_path), embedder=FakeEmbedder())
    with live as url, httpx.Client(base_url=url, timeout=60) as client:
        ids = add_people(client)
        milvus = live.app.state.resources.gallery._client
        real = {name: getattr(milvus, name) for name in ("search", "query", "insert")}

        def lost(*args, **kwargs):
            raise MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:19530")

        for name in real:
            setattr(milvus, name, lost)
        assert_unavailable(client.post("/v1/search", files={"image": CROPS[1]}), "gallery_unavailable")
        assert_unavailable(client.get(f"/v1/gallery/{ids[0]}"), "gallery_unavailable")
        extra = person_crops(1, seed=77)[0]
        r = client.post("/v1/gallery", files={"images": extra}, data={"person_id": "p9"})
        assert_unavailable(r, "gallery_unavailable")
        for name, method in real.items():  # the connection is back: the same server answers again
            setattr(milvus, name, method)
        r = client.post("/v1/search", files={"image": CROPS[1]}, data={"top_k": "1"})
        assert r.status_code == 200 and r.json()["hits"][0]["id"] == ids[1]


def test_a_collection_dropped_under_the_server_answers_503_not_empty(tmp_path):
    live = LiveServer(lite_settings(tmp_path), embedder=FakeEmbedder())
    with live as url, httpx.Client(base_url=url, timeout=60) as client:
        ids = add_people(client)
        live.app.state.resources.gallery._client.drop_collection("gallery")
        assert_unavailable(client.post("/v1/search", files={"image": CROPS[0]}), "gallery_corrupt")
        assert_unavailable(client.get(f"/v1/gallery/{ids[0]}"), "gallery_corrupt")
        assert_unavailable(client.delete(f"/v1/gallery/{ids[0]}"), "gallery_corrupt")


def test_a_collection_dropped_between_starts_keeps_the_server_unready_until_allowed(tmp_path):
    with LiveServer(lite_settings(tmp_path), embedder=FakeEmbedder()) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            add_people(client)
    MilvusClient(uri=str((tmp_path / "site.db").resolve())).drop_collection("gallery")

    with LiveServer(lite_settings(tmp_path), embedder=FakeEmbedder()) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.get("/readyz")
            assert r.status_code == 503 and "REID_GALLERY_ALLOW_MISSING_LOG" in r.json()["error"]["message"]
            assert client.post("/v1/search", files={"image": CROPS[0]}).status_code == 503

    allowed = lite_settings(tmp_path, gallery_allow_missing_log=True)
    with LiveServer(allowed, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/gallery").json()["count"] == 0
