"""API behaviour a real backend cannot be made to show on demand: backend down, slow or broken, a gallery from
another model, overload. The app runs under real uvicorn on 127.0.0.1 with a real gallery folder; only the
embedder is a deterministic fake (tests/client/live.py)."""

import io
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from index.gallery import Gallery
from tests.support import FAKE_SPEC, FakeEmbedder, LiveServer, gallery_settings, mutated, person_crops

CROPS = person_crops(6, seed=1)


def check_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"]
    return body


def search_finds(client: httpx.Client, index: int, person: str) -> None:
    """The canary after every failure: a valid search still answers, and correctly."""
    r = client.post("/v1/search", files={"image": CROPS[index]}, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    assert r.json()["identities"][0]["person_id"] == person
    assert r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    fake = FakeEmbedder()
    settings = gallery_settings(
        tmp_path_factory.mktemp("faults") / "gallery",
        embed_deadline_s=0.5,
        max_in_flight=2,
        max_upload_bytes=64 * 1024,
    )
    with LiveServer(settings, embedder=fake) as url, httpx.Client(base_url=url, timeout=30) as client:
        people = [f"p{i}" for i in range(len(CROPS))]
        r = client.post(
            "/v1/gallery", files=[("images", c) for c in CROPS], data={"person_id": people, "camera_id": "1"}
        )
        assert r.status_code == 201, r.text
        yield fake, client
        fake.fault, fake.hold = None, False


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("unavailable", 503, "embedder_unavailable"),
        ("slow", 504, "embedder_deadline"),
        ("garbage", 502, "embedder_bad_response"),
        ("bug", 500, "internal_error"),
    ],
)
def test_backend_faults_map_to_their_status_then_recover(served, fault, status, code):
    fake, client = served
    fake.fault = fault
    try:
        for path in ("/v1/search", "/v1/embed"):
            r = client.post(path, files={"image": CROPS[0]})
            body = check_error(r, status, code)
            if status == 503:
                assert r.headers["retry-after"] == "1"
            if fault == "bug":  # the exception's text (paths, "Traceback") never reaches the client
                assert body["error"]["message"] == "internal server error"
                assert "Traceback" not in r.text and "srv" not in r.text
    finally:
        fake.fault = None
    search_finds(client, 0, "p0")


def test_readyz_follows_the_backend(served):
    fake, client = served
    assert client.get("/readyz").status_code == 200
    fake.fault = "unavailable"
    try:
        check_error(client.get("/readyz"), 503, "not_ready")
        assert client.get("/healthz").status_code == 200  # alive while not ready
    finally:
        fake.fault = None
    assert client.get("/readyz").json()["model_id"] == FAKE_SPEC.model_id


def test_excess_requests_get_an_immediate_503_not_a_queue(served):
    fake, client = served
    fake.hold = True
    results: list[int] = []

    def search() -> None:
        results.append(client.post("/v1/search", files={"image": CROPS[1]}).status_code)

    held = [threading.Thread(target=search) for _ in range(2)]  # the server's bound is 2
    calls_before = len(fake.calls)
    try:
        for t in held:
            t.start()
        deadline = time.monotonic() + 20
        while len(fake.calls) < calls_before + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(fake.calls) == calls_before + 2, "the two held requests never reached the embedder"
        r = client.post("/v1/search", files={"image": CROPS[1]})
        check_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 200  # probes are never refused
        assert len(fake.calls) == calls_before + 2  # the refused request did no model work
    finally:
        fake.hold = False
        for t in held:
            t.join(timeout=20)
    assert results == [200, 200]
    search_finds(client, 1, "p1")


def test_upload_cap_answers_413_before_and_while_reading(served):
    _, client = served
    big = b"\xff\xd8" + b"x" * (70 * 1024)
    check_error(client.post("/v1/search", files={"image": big}), 413, "payload_too_large")

    def chunked():  # no Content-Length: the running count must catch it
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(40):
            yield b"x" * 4096
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/search", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
    check_error(r, 413, "payload_too_large")
    search_finds(client, 2, "p2")


def test_request_id_is_echoed_and_server_timing_is_sent(served):
    _, client = served
    r = client.post("/v1/search", files={"image": CROPS[3]}, headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    timing = r.headers["server-timing"]
    assert all(f"{step};dur=" in timing for step in ("decode", "embed", "search"))
    bad = client.get("/v1/gallery/999999", headers={"X-Request-ID": "bad id with spaces"})
    body = check_error(bad, 404, "not_found")
    assert body["request_id"] != "bad id with spaces"


def test_metrics_count_routes_by_template_and_status(served):
    _, client = served
    client.get("/v1/gallery/123456")
    client.get("/no/such/path/42")
    client.post("/v1/search", files={"image": CROPS[4]})
    text = client.get("/metrics").text
    assert 'reid_http_requests_total{method="GET",route="/v1/gallery/{item_id}",status="404"}' in text
    assert 'route="unmatched",status="404"' in text and "/no/such/path" not in text
    assert 'reid_http_request_duration_seconds_bucket{le="0.001",method="POST",route="/v1/search",status="200"}' in text
    assert "reid_embed_batch_size_count" in text and "reid_search_duration_seconds_count" in text
    assert f"reid_gallery_size {float(len(CROPS))}" in text


def test_a_gallery_built_with_another_model_keeps_the_server_not_ready(tmp_path):
    gallery_dir = tmp_path / "other"
    Gallery.create(gallery_dir, model_id="another-model", dim=FAKE_SPEC.dim).close()
    with LiveServer(gallery_settings(gallery_dir), embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as c:
        assert c.get("/healthz").status_code == 200
        body = check_error(c.get("/readyz"), 503, "not_ready")
        assert "another model" in body["error"]["message"] and str(tmp_path) not in body["error"]["message"]
        check_error(c.post("/v1/search", files={"image": CROPS[0]}), 503, "not_ready")
    with Gallery.open(gallery_dir, readonly=True) as g:  # and it was left as it was
        assert g.model_id == "another-model" and len(g) == 0


def test_cors_is_off_unless_origins_are_configured(tmp_path):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with LiveServer(gallery_settings(tmp_path / "a"), embedder=FakeEmbedder()) as url:
        r = httpx.options(f"{url}/v1/search", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    settings = gallery_settings(tmp_path / "b", cors_origins="https://app.example")
    with LiveServer(settings, embedder=FakeEmbedder()) as url:
        r = httpx.options(f"{url}/v1/search", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        evil = httpx.options(f"{url}/v1/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


def _jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, "JPEG")
    return buf.getvalue()


def test_random_and_mutated_uploads_never_get_a_500(served):
    _, client = served

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.one_of(st.binary(max_size=256), mutated(CROPS[:3] + [_jpeg(CROPS[0])], max_edits=4, max_insert=8)))
    def upload(data):
        r = client.post("/v1/embed", files={"image": ("x.jpg", data, "image/jpeg")})
        assert r.status_code in (200, 400, 415, 422), r.text
        if r.status_code != 200:
            assert r.json()["error"]["code"] in {
                "invalid_image",
                "unsupported_media_type",
                "image_too_small",
                "image_too_large",
                "bad_aspect_ratio",
            }

    upload()
    search_finds(client, 5, "p5")
