"""A newcomer's mistakes over HTTP: filters written as users write them (repeated or comma-separated, unknown values
named in the answer), times in either form, a batch add with one bad image, a 405's Allow, the docs pages without
internet, their metrics labels, and a server pointed at a gallery or model that is not there. The app runs under
uvicorn on 127.0.0.1 with a deterministic fake embedder (tests/support.py)."""

import re
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from server.main import create_app
from server.settings import Settings
from server.startup import StartupRefused
from tests.support import FakeEmbedder, LiveServer, gallery_settings, make_spec, person_crops, write_toy_onnx

CROPS = person_crops(6, seed=3)
PEOPLE = ["p0", "p1", "p2", "p3", "p4", "p5"]
CAMERAS = ["1", "2", "3", "1", "2", "3"]
TIMES = ["1700000000", "1700000100", "1700000200", "1700000300", "1700000400", "1700000500"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = gallery_settings(tmp_path_factory.mktemp("newcomer") / "gallery")
    with LiveServer(settings, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post(
            "/v1/gallery",
            files=[("images", crop) for crop in CROPS],
            data={"person_id": PEOPLE, "camera_id": CAMERAS, "captured_at": TIMES},
        )
        assert r.status_code == 201, r.text
        yield c


def search(client: httpx.Client, **fields) -> dict:
    r = client.post("/v1/search", files={"image": CROPS[0]}, data={"top_k": "10", **fields})
    assert r.status_code == 200, r.text
    return r.json()


def cameras_of(answer: dict) -> set[str]:
    return {hit["camera_id"] for hit in answer["hits"]}


def test_a_list_filter_is_the_same_repeated_or_comma_separated(client):
    repeated = search(client, cameras=["1", "2"])
    assert cameras_of(repeated) == {"1", "2"}
    for written in ("1,2", " 1 , 2 ", "1,,2,"):
        assert cameras_of(search(client, cameras=written)) == {"1", "2"}, written
    assert cameras_of(search(client, exclude_cameras="1,2")) == {"3"}
    people = search(client, person_ids="p1,p3")
    assert {h["person_id"] for h in people["hits"]} == {"p1", "p3"} and people["unmatched_filters"] == {}


def test_an_empty_filter_is_no_filter(client):
    assert len(search(client, cameras="")["hits"]) == len(CROPS)


def test_filter_values_that_match_nothing_are_named(client):
    answer = search(client, cameras="1,99", person_ids=["p0", "nobody"], exclude_cameras="77")
    assert answer["unmatched_filters"] == {"cameras": ["99"], "person_ids": ["nobody"], "exclude_cameras": ["77"]}
    assert {h["person_id"] for h in answer["hits"]} == {"p0"}
    # A value that exists but is filtered out by another filter is not "unmatched": it is in the gallery.
    assert search(client, cameras="2", person_ids="p0")["unmatched_filters"] == {}


def test_times_are_unix_seconds_or_iso_8601(client):
    unix = search(client, time_from="1700000100", time_to="1700000300")
    assert {h["person_id"] for h in unix["hits"]} == {"p1", "p2", "p3"}
    for start, end in [
        ("2023-11-14T22:15:00Z", "2023-11-14T22:18:20Z"),
        ("2023-11-14T23:15:00+01:00", "2023-11-14 22:18:20"),  # no zone: UTC
        ("2023-11-14t22:15:00z", "1700000300"),
    ]:
        iso = search(client, time_from=start, time_to=end)
        assert {h["person_id"] for h in iso["hits"]} == {"p1", "p2", "p3"}, (start, end)


def test_a_time_in_no_accepted_form_names_the_forms(client):
    r = client.post("/v1/search", files={"image": CROPS[0]}, data={"time_from": "yesterday"})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("time_from:") and "Unix seconds" in message and "ISO 8601" in message


def test_the_schema_documents_both_list_forms_and_both_time_forms(client):
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["Body_search_v1_search_post"]["properties"]
    for name in ("cameras", "exclude_cameras", "person_ids"):
        assert "repeat the field" in body[name]["description"] and "commas" in body[name]["description"]
        assert body[name]["type"] == "array"
    assert {"type": "number"} in body["time_from"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in body["time_from"]["anyOf"]
    ok = schema["paths"]["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "unmatched_filters" in schema["components"]["schemas"][ok["$ref"].rsplit("/", 1)[1]]["properties"]


def test_one_bad_image_in_a_batch_does_not_sink_the_others(client):
    good = person_crops(2, seed=11)
    before = client.get("/v1/gallery").json()["count"]
    r = client.post(
        "/v1/gallery",
        files=[("images", good[0]), ("images", b"not an image"), ("images", good[1]), ("images", b"")],
        data={"person_id": "batch"},
    )
    assert r.status_code == 207, r.text
    body = r.json()
    assert (body["added"], body["failed"], body["duplicates"]) == (2, 2, 0)
    ok, junk, ok2, empty = body["items"]
    assert ok["id"] is not None and ok2["id"] is not None and ok["error"] is None
    assert junk["id"] is None and junk["error"]["code"] == "unsupported_media_type"
    assert empty["id"] is None and empty["error"]["code"] == "invalid_image"
    assert body["ids"] == [ok["id"], None, ok2["id"], None]
    assert client.get("/v1/gallery").json()["count"] == before + 2
    assert client.get(f"/v1/gallery/{ok2['id']}").json()["person_id"] == "batch"


def test_a_batch_whose_every_image_is_bad_names_each(client):
    r = client.post("/v1/gallery", files=[("images", b"junk"), ("images", b"")], data={"person_id": "x"})
    assert r.status_code == 415
    message = r.json()["error"]["message"]
    assert "image 0:" in message and "image 1:" in message and "empty" in message


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("PUT", "/v1/gallery/1", {"GET", "DELETE"}), ("DELETE", "/v1/gallery", {"GET", "POST"})],
)
def test_a_405_allows_every_method_of_the_path(client, method, path, allowed):
    r = client.request(method, path)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) == allowed


def test_the_docs_pages_load_everything_from_the_api_itself(client):
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert sources and all(s.startswith("/") for s in sources), sources  # no CDN: works offline
        for source in sources:
            assert client.get(source).status_code == 200, source
    assert "SwaggerUIBundle" in client.get("/static-offline-docs/swagger-ui-bundle.js").text[:100_000]


def test_metrics_label_the_docs_and_the_schema(client):
    client.get("/docs")
    client.get("/openapi.json")
    text = client.get("/metrics").text
    assert 'route="/docs",status="200"' in text and 'route="/openapi.json",status="200"' in text
    client.get("/no/such/path")
    assert 'route="unmatched",status="404"' in client.get("/metrics").text


# -- a server pointed at something that is not there ---------------------------------------------------------


def test_a_gallery_folder_that_does_not_exist_is_refused_unless_created(tmp_path):
    missing = tmp_path / "typo"
    app = create_app(Settings(gallery_dir=missing, _env_file=None), embedder=FakeEmbedder())
    with pytest.raises(StartupRefused, match="REID_CREATE_GALLERY"), TestClient(app):  # the lifespan refuses
        pass
    assert not missing.exists()
    with LiveServer(gallery_settings(missing), embedder=FakeEmbedder()) as url:
        assert httpx.get(f"{url}/readyz").json()["gallery_size"] == 0
    assert missing.is_dir()


def run_server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "REID_BACKEND": "onnx", **env}
    command = [sys.executable, "-m", "server", "--port", "1", *args]  # never binds: refused before uvicorn starts
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_python_m_server_refuses_a_missing_gallery_naming_it_and_the_flag(tmp_path):
    (tmp_path / "artifact").mkdir()
    write_toy_onnx(tmp_path / "artifact" / "model.onnx", make_spec())
    done = run_server({"REID_ARTIFACT": str(tmp_path / "artifact"), "REID_GALLERY_DIR": str(tmp_path / "typo")})
    assert done.returncode == 2
    assert str(tmp_path / "typo") in done.stderr and "--create-gallery" in done.stderr
    assert "REID_CREATE_GALLERY" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "typo").exists()


def test_python_m_server_says_where_it_answers_its_model_and_gallery(tmp_path):
    from client.launch import free_port

    (tmp_path / "artifact").mkdir()
    write_toy_onnx(tmp_path / "artifact" / "model.onnx", make_spec())
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "REID_ARTIFACT": str(tmp_path / "artifact"),
        "REID_GALLERY_DIR": str(tmp_path / "g"),
    }
    command = [sys.executable, "-m", "server", "--port", str(port), "--create-gallery", "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"http://127.0.0.1:{port}" in first and str(tmp_path / "artifact") in first and str(tmp_path / "g") in first


def test_python_m_server_refuses_a_missing_model_naming_its_path(tmp_path):
    (tmp_path / "g").mkdir()
    done = run_server({"REID_ARTIFACT": str(tmp_path / "artefact"), "REID_GALLERY_DIR": str(tmp_path / "g")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(tmp_path / "artefact" / "model.onnx") in done.stderr and "REID_ARTIFACT" in done.stderr


def test_an_unreachable_triton_keeps_the_server_not_ready_naming_it(tmp_path):
    from client.launch import free_port

    url = f"127.0.0.1:{free_port()}"
    settings = gallery_settings(tmp_path / "g", backend="triton", triton_url=url, model_name="reid")
    with LiveServer(settings) as api:
        r = httpx.get(f"{api}/readyz")
        assert r.status_code == 503 and url in r.json()["error"]["message"] and "reid" in r.json()["error"]["message"]
