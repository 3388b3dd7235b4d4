"""Tracks and identities through HTTP: tracks added over the API with track_id, camera_id and captured_at are
listed and paged, linked by ``python -m ingestion.link`` (its main, on the gallery while the server is stopped: an
embedded gallery has one writer), and the identities' timelines are served; an erased track is never brought back
by a relink. The real app under uvicorn with the fake embedder (a crop's vector is its thumbnail), on a gallery
folder and on a Milvus Lite file."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from ingestion.cli import link_main
from tests.support import FakeEmbedder, LiveServer, gallery_settings

ADMIN, READER = "admin-key-0123", "read-key-4567"
PEOPLE, CAMERAS, PER_TRACK = 3, ("c1", "c2"), 2
T0 = 1_700_000_000.0


def _crop(person: int, k: int) -> bytes:
    """A crop of ``person``: the same coarse pattern (so the same embedding, nearly) with a little noise, so that
    every crop's bytes differ (the gallery stores each content once)."""
    rng = np.random.default_rng(person)
    coarse = rng.integers(0, 256, (8, 4, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((64, 128), Image.NEAREST)).astype(np.int16)
    noise = np.random.default_rng(1000 + person * 100 + k).integers(-3, 4, big.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _track_id(person: int, camera: str) -> str:
    return f"{camera}/p{person}"


def _server(gallery_dir) -> LiveServer:
    """The app on a gallery folder, or on a Milvus Lite file (a name ending in .db)."""
    where = {"gallery_uri": str(gallery_dir)} if str(gallery_dir).endswith(".db") else {}
    settings = gallery_settings(gallery_dir, admin_keys=ADMIN, read_keys=READER, **where)
    return LiveServer(settings, embedder=FakeEmbedder())


def _client(url: str, key: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60)


def _add_tracks(client: httpx.Client, *, named: bool = True) -> None:
    """Person p walks past c1 at T0 + 100 p and past c2 a minute later; each pass is a track of PER_TRACK crops.
    ``named``: the crops carry a person_id (else none, as footage has)."""
    for p in range(PEOPLE):
        for c, camera in enumerate(CAMERAS):
            start = T0 + 100 * p + 60 * c
            ks = [c * PER_TRACK + k for k in range(PER_TRACK)]
            files = [("images", (f"{k}.png", _crop(p, k), "image/png")) for k in ks]
            data = {
                **({"person_id": f"person{p}"} if named else {}),
                "camera_id": camera,
                "track_id": _track_id(p, camera),
                "captured_at": [str(start + k) for k in range(PER_TRACK)],
            }
            r = client.post("/v1/gallery", files=files, data=data)
            assert r.status_code == 201, r.text


def _all_tracks(client: httpx.Client, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        r = client.get("/v1/tracks", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["tracks"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out


@pytest.fixture(params=["folder", "milvus-lite"])
def gallery_dir(request, tmp_path):
    if request.param == "milvus-lite":
        pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")
        return tmp_path / "gallery.db"
    return tmp_path / "gallery"


def test_empty_gallery_answers_empty_lists_and_404s(gallery_dir):
    with _server(gallery_dir) as url, _client(url, READER) as client:
        assert client.get("/v1/tracks").json() == {"tracks": [], "next_cursor": None}
        assert client.get("/v1/identities").json() == {"identities": [], "next_cursor": None}
        for path in ("/v1/tracks/nope", "/v1/identities/1"):
            r = client.get(path)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"
        assert httpx.get(f"{url}/v1/tracks").status_code == 401
        assert client.get("/v1/tracks", params={"cursor": "x"}).status_code == 400
        assert client.get("/v1/tracks", params={"time_from": 10, "time_to": 5}).status_code == 400


def test_tracks_listed_paged_linked_and_timelines(gallery_dir):
    with _server(gallery_dir) as url, _client(url) as admin, _client(url, READER) as client:
        _add_tracks(admin, named=False)  # no person_id: a person is unknown until linking or someone names them
        first = client.get("/v1/tracks", params={"limit": 4}).json()
        assert len(first["tracks"]) == 4 and first["next_cursor"] is not None
        tracks = _all_tracks(client, limit=4)
        assert len(tracks) == PEOPLE * len(CAMERAS)
        assert len({t["track_id"] for t in tracks}) == len(tracks)
        one = next(t for t in tracks if t["track_id"] == _track_id(1, "c2"))
        assert one["camera_id"] == "c2" and one["n_items"] == PER_TRACK and one["identity_id"] is None
        assert one["first_seen"] == T0 + 160 and one["last_seen"] == T0 + 160 + PER_TRACK - 1
        assert [t["camera_id"] for t in _all_tracks(client, camera_id="c1")] == ["c1"] * PEOPLE
        window = _all_tracks(client, time_from=T0 + 150, time_to=T0 + 170)  # person 1 on c2 only
        assert [t["track_id"] for t in window] == [_track_id(1, "c2")]
        r = client.get(f"/v1/tracks/{_track_id(1, 'c2')}")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert len(detail["items"]) == PER_TRACK and {i["track_id"] for i in detail["items"]} == {_track_id(1, "c2")}
        assert detail["best_item_id"] in {i["id"] for i in detail["items"]}
        assert {i["person_id"] for i in detail["items"]} == {None}
        assert client.get("/v1/identities").json()["identities"] == []

    assert link_main(["--gallery", str(gallery_dir)]) == 0

    with _server(gallery_dir) as url, _client(url, READER) as client:
        tracks = _all_tracks(client)
        by_track = {t["track_id"]: t["identity_id"] for t in tracks}
        assert None not in by_track.values()
        for p in range(PEOPLE):  # both passes of a person are one identity; different people are not
            assert by_track[_track_id(p, "c1")] == by_track[_track_id(p, "c2")]
        assert len(set(by_track.values())) == PEOPLE
        page = client.get("/v1/identities", params={"limit": 2}).json()
        assert len(page["identities"]) == 2 and page["next_cursor"] is not None
        rest = client.get("/v1/identities", params={"cursor": page["next_cursor"]}).json()
        assert len(rest["identities"]) == PEOPLE - 2 and rest["next_cursor"] is None
        ident = by_track[_track_id(2, "c1")]
        timeline = client.get(f"/v1/identities/{ident}").json()
        assert timeline["identity_id"] == ident
        assert [e["camera_id"] for e in timeline["timeline"]] == ["c1", "c2"]
        assert [e["track_id"] for e in timeline["timeline"]] == [_track_id(2, "c1"), _track_id(2, "c2")]
        starts = [e["first_seen"] for e in timeline["timeline"]]
        assert starts == sorted(starts)
        on_c2 = client.get("/v1/identities", params={"camera_id": "c2", "time_from": T0 + 150}).json()
        assert {i["identity_id"] for i in on_c2["identities"]} == {by_track[_track_id(p, "c2")] for p in (1, 2)}


def test_erased_track_never_comes_back_after_relink(gallery_dir):
    with _server(gallery_dir) as url, _client(url) as admin:
        _add_tracks(admin)
    assert link_main(["--gallery", str(gallery_dir)]) == 0
    gone = _track_id(0, "c2")
    with _server(gallery_dir) as url, _client(url) as admin:
        ident = admin.get(f"/v1/tracks/{gone}").json()["identity_id"]
        for item in admin.get(f"/v1/tracks/{gone}").json()["items"]:
            assert admin.delete(f"/v1/gallery/{item['id']}").status_code == 200
        assert admin.get(f"/v1/tracks/{gone}").status_code == 404
    assert link_main(["--gallery", str(gallery_dir), "--full"]) == 0
    with _server(gallery_dir) as url, _client(url, READER) as client:
        assert client.get(f"/v1/tracks/{gone}").status_code == 404
        assert gone not in {t["track_id"] for t in _all_tracks(client)}
        timeline = client.get(f"/v1/identities/{ident}").json()["timeline"]
        assert [e["track_id"] for e in timeline] == [_track_id(0, "c1")]


def _search(client: httpx.Client, crops: list[bytes], **form) -> dict:
    files = [("image", (f"q{i}.png", c, "image/png")) for i, c in enumerate(crops)]
    r = client.post("/v1/search", files=files, data=form)
    assert r.status_code == 200, r.text
    return r.json()


def test_search_grouped_by_track_answers_tracks_with_identities(gallery_dir):
    with _server(gallery_dir) as url, _client(url) as admin:
        _add_tracks(admin)
        plain = _search(admin, [_crop(1, 99)], top_k=6)
        assert plain["tracks"] is None
        grouped = _search(admin, [_crop(1, 99)], top_k=6, group_by="track")
        assert grouped["hits"] == plain["hits"]
        tracks = grouped["tracks"]
        assert {t["track_id"] for t in tracks[:2]} == {_track_id(1, "c1"), _track_id(1, "c2")}
        assert [t["score"] for t in tracks] == sorted((t["score"] for t in tracks), reverse=True)
        best = max(h["score"] for h in grouped["hits"] if h["track_id"] == tracks[0]["track_id"])
        assert tracks[0]["score"] == best and tracks[0]["n_items"] == PER_TRACK
        assert tracks[0]["identity_id"] is None
        r = admin.post("/v1/search", files={"image": ("q.png", _crop(1, 99), "image/png")}, data={"group_by": "person"})
        assert r.status_code in (400, 422)
    assert link_main(["--gallery", str(gallery_dir)]) == 0
    with _server(gallery_dir) as url, _client(url, READER) as client:
        tracks = _search(client, [_crop(1, 99)], top_k=6, group_by="track")["tracks"]
        assert tracks[0]["identity_id"] is not None and tracks[0]["identity_id"] == tracks[1]["identity_id"]


def test_several_images_are_one_query_of_their_mean_embedding(gallery_dir):
    with _server(gallery_dir) as url, _client(url) as admin:
        _add_tracks(admin)
        a, b = _crop(2, 50), _crop(0, 51)  # two different people: their mean is neither
        e = [
            np.array(admin.post("/v1/embed", files={"image": ("q.png", c, "image/png")}).json()["embedding"])
            for c in (a, b)
        ]
        norm = float(np.linalg.norm(e[0] + e[1]))
        single = [{h["id"]: h["score"] for h in _search(admin, [c], top_k=12)["hits"]} for c in (a, b)]
        both = _search(admin, [a, b], top_k=12)["hits"]
        assert len(both) == 12
        for hit in both:  # <(e0 + e1) / |e0 + e1|, g> = (<e0, g> + <e1, g>) / |e0 + e1|
            assert hit["score"] == pytest.approx((single[0][hit["id"]] + single[1][hit["id"]]) / norm, abs=1e-4)
        r = admin.post("/v1/search", files=[("image", (f"{i}.png", a, "image/png")) for i in range(17)])
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameters"


def test_linking_over_http_while_the_server_holds_the_gallery(gallery_dir):
    with _server(gallery_dir) as url, _client(url) as admin, _client(url, READER) as client:
        _add_tracks(admin, named=False)
        assert client.post("/v1/identities/link").status_code == 403  # a write: admin keys only
        r = admin.post("/v1/identities/link")
        assert r.status_code == 200, r.text
        run = r.json()
        assert (run["mode"], run["tracks"], run["assigned"], run["identities"]) == ("incremental", 6, 6, PEOPLE)
        assert run["threshold_source"].startswith("the default") and run["changes"] is None
        by_track = {t["track_id"]: t["identity_id"] for t in _all_tracks(client)}
        assert all(by_track[_track_id(p, "c1")] == by_track[_track_id(p, "c2")] for p in range(PEOPLE))
        again = admin.post("/v1/identities/link", data={"full": "true"}).json()
        assert again["mode"] == "full" and again["assigned"] == 0 and again["changes"]["unchanged"] == PEOPLE
        assert admin.post("/v1/identities/link", data={"far": "2"}).status_code == 422
