"""The API over either gallery backend (REID_GALLERY_URI), and searches that do not queue behind a write."""

import threading

import httpx
import pytest

from server.settings import Settings
from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

CROPS = person_crops(4, seed=3)


def add_people(client: httpx.Client, crops=CROPS, people=("p0", "p1", "p2", "p3")) -> list[int]:
    r = client.post(
        "/v1/gallery",
        files=[("images", c) for c in crops],
        data={"person_id": list(people), "camera_id": ["c1", "c2", "c1", "c2"]},
    )
    assert r.status_code == 201, r.text
    return r.json()["ids"]


def test_the_api_serves_a_milvus_lite_gallery_like_a_folder(tmp_path):
    pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")
    settings = gallery_settings(tmp_path / "unused", gallery_uri=str(tmp_path / "site.db"))
    with LiveServer(settings, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        ids = add_people(client)
        again = client.post("/v1/gallery", files=[("images", CROPS[0])], data={"person_id": "p0"}).json()
        assert again["duplicates"] == 1 and again["ids"] == ids[:1]

        r = client.post("/v1/search", files={"image": CROPS[2]}, data={"top_k": "3"})
        assert r.status_code == 200, r.text
        assert r.json()["identities"][0]["person_id"] == "p2" and r.json()["hits"][0]["id"] == ids[2]
        only_c2 = client.post("/v1/search", files={"image": CROPS[2]}, data={"top_k": "3", "cameras": "c2"}).json()
        assert {h["person_id"] for h in only_c2["hits"]} == {"p1", "p3"}

        stats = client.get("/v1/gallery").json()
        assert stats["count"] == 4 and stats["dim"] == FakeEmbedder().spec.dim and stats["index_type"] == "Flat"
        assert client.get(f"/v1/gallery/{ids[1]}").json()["person_id"] == "p1"
        assert client.delete(f"/v1/gallery/{ids[1]}").status_code == 200
        assert client.get(f"/v1/gallery/{ids[1]}").status_code == 404
        hits = client.post("/v1/search", files={"image": CROPS[1]}, data={"top_k": "4"}).json()["hits"]
        assert ids[1] not in [h["id"] for h in hits] and len(hits) == 3
    assert not (tmp_path / "unused").exists()  # REID_GALLERY_URI wins over REID_GALLERY_DIR


def test_a_search_answers_while_an_add_is_held_in_the_gallery(tmp_path):
    live = LiveServer(gallery_settings(tmp_path / "gallery"), embedder=FakeEmbedder())
    with live as url, httpx.Client(base_url=url, timeout=60) as client:
        ids = add_people(client)
        gallery = live.app.state.resources.gallery
        inside, release = threading.Event(), threading.Event()
        real_add_new = gallery.add_new

        def add_new(*args, **kwargs):  # the name routes it to the writer thread, as the real method
            inside.set()
            release.wait()
            return real_add_new(*args, **kwargs)

        gallery.add_new = add_new
        extra = person_crops(1, seed=99)
        result: dict = {}

        def add() -> None:
            with httpx.Client(base_url=url, timeout=60) as writer:
                result["add"] = writer.post("/v1/gallery", files={"images": extra[0]}, data={"person_id": "p9"})

        adder = threading.Thread(target=add)
        adder.start()
        try:
            assert inside.wait(timeout=60), "the add never reached the gallery"
            # The add is parked inside the gallery's write path: a search must still answer.
            r = client.post("/v1/search", files={"image": CROPS[3]}, data={"top_k": "2"})
            assert r.status_code == 200 and r.json()["hits"][0]["id"] == ids[3]
            assert client.get(f"/v1/gallery/{ids[0]}").status_code == 200
            assert "add" not in result  # still held
        finally:
            release.set()
            adder.join()
        assert result["add"].status_code == 201, result["add"].text


def test_gallery_uri_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("REID_GALLERY_URI", "milvus://milvus:19530/reid")
    assert Settings(_env_file=None).gallery_location == "milvus://milvus:19530/reid"
    monkeypatch.setenv("REID_GALLERY_URI", "")  # compose passes an unset variable as empty: the folder applies
    monkeypatch.setenv("REID_GALLERY_DIR", str(tmp_path / "g"))
    assert Settings(_env_file=None).gallery_location == str(tmp_path / "g")
    for bad in ("milvus://milvus/reid", "milvus://milvus:19530/bad-name", "s3://bucket/x"):
        monkeypatch.setenv("REID_GALLERY_URI", bad)
        with pytest.raises(ValueError):
            Settings(_env_file=None)
