"""POST /v1/search in both forms: the multipart form and the image as the whole body (query-string parameters).
Every guarantee of the search (answers, parameter checks, backend faults, overload, body size and deadline, request
ids, metrics, hostile bytes) is checked on both; and the served variant shown by /readyz, GET /v1/gallery and
/metrics, the variant refusal of a gallery, and the inline gallery search."""

import socket
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import server.resources
from formats.spec import CrossVariantGate, Retrieval, VariantSpec
from tests.support import FAKE_SPEC, FakeEmbedder, LiveServer, gallery_settings, mutated, person_crops

CROPS = person_crops(6, seed=1)
FORMS = ("multipart", "raw")
MAX_UPLOAD = 64 * 1024


def post_search(client: httpx.Client, form: str, image: bytes, params: dict | None = None, **kwargs) -> httpx.Response:
    """One search in the given form, with the same parameters."""
    params = params or {}
    if form == "multipart":
        return client.post("/v1/search", files={"image": image}, data=params, **kwargs)
    headers = {"content-type": "image/png", **kwargs.pop("headers", {})}
    return client.post("/v1/search", content=image, params=params, headers=headers, **kwargs)


def check_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    fake = FakeEmbedder()
    settings_ = gallery_settings(
        tmp_path_factory.mktemp("raw") / "gallery",
        embed_deadline_s=0.5,
        max_in_flight=2,
        max_upload_bytes=MAX_UPLOAD,
        body_timeout_s=1.0,
    )
    with LiveServer(settings_, embedder=fake) as url, httpx.Client(base_url=url, timeout=30) as client:
        people = [f"p{i}" for i in range(len(CROPS))]
        cameras = [str(i % 2 + 1) for i in range(len(CROPS))]
        r = client.post(
            "/v1/gallery", files=[("images", c) for c in CROPS], data={"person_id": people, "camera_id": cameras}
        )
        assert r.status_code == 201, r.text
        yield fake, client, url
        fake.fault, fake.hold = None, False


def search_finds(client: httpx.Client, form: str, index: int) -> None:
    r = post_search(client, form, CROPS[index], {"top_k": "3"})
    assert r.status_code == 200, r.text
    assert r.json()["identities"][0]["person_id"] == f"p{index}"


@pytest.mark.parametrize(
    "params",
    [
        {"top_k": "2"},
        {"top_k": "5", "cameras": "2"},
        {"top_k": "5", "cameras": "1,2", "exclude_cameras": "2"},
        {"person_ids": ["p1", "p3"]},
        {"person_ids": "p1,p3", "group_by": "track"},
        {"query_camera": "1"},
    ],
)
def test_both_forms_give_the_same_answer(served, params):
    _, client, _ = served
    answers = [post_search(client, form, CROPS[1], params) for form in FORMS]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    multipart, raw = (r.json() for r in answers)
    assert raw["hits"] == multipart["hits"] and raw["identities"] == multipart["identities"]
    assert raw["verdict"] == multipart["verdict"]
    assert raw["hits"], "the search found nothing to compare"


@pytest.mark.parametrize(
    "params", [{"top_k": "0"}, {"top_k": "101"}, {"time_from": "yesterday"}, {"time_from": "5", "time_to": "4"}]
)
def test_bad_parameters_are_refused_alike_in_both_forms(served, params):
    _, client, _ = served
    answers = [post_search(client, form, CROPS[0], params) for form in FORMS]
    assert answers[0].status_code == answers[1].status_code and answers[0].status_code in (400, 422)
    for r in answers:
        check_error(r, r.status_code, "invalid_parameters")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("unavailable", 503, "embedder_unavailable"),
        ("slow", 504, "embedder_deadline"),
        ("garbage", 502, "embedder_bad_response"),
        ("bug", 500, "internal_error"),
    ],
)
def test_backend_faults_map_to_their_status_in_both_forms(served, form, fault, status, code):
    fake, client, _ = served
    fake.fault = fault
    try:
        body = check_error(post_search(client, form, CROPS[0]), status, code)
        if fault == "bug":
            assert body["error"]["message"] == "internal server error"
    finally:
        fake.fault = None
    search_finds(client, form, 0)


@pytest.mark.parametrize("form", FORMS)
def test_excess_requests_get_an_immediate_503_in_both_forms(served, form):
    fake, client, _ = served
    fake.hold = True
    results: list[int] = []
    held = [threading.Thread(target=lambda: results.append(post_search(client, form, CROPS[1]).status_code))]
    held.append(threading.Thread(target=lambda: results.append(post_search(client, form, CROPS[2]).status_code)))
    calls_before = len(fake.calls)
    try:
        for t in held:
            t.start()
        deadline = time.monotonic() + 20
        while len(fake.calls) < calls_before + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(fake.calls) == calls_before + 2, "the two held requests never reached the embedder"
        r = post_search(client, form, CROPS[3])
        check_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        assert len(fake.calls) == calls_before + 2  # the refused request did no model work
    finally:
        fake.hold = False
        for t in held:
            t.join(timeout=20)
    assert results == [200, 200]


def test_the_upload_cap_answers_413_for_a_raw_body_declared_or_streamed(served):
    _, client, _ = served
    big = b"\x89PNG" + b"x" * (MAX_UPLOAD + 10)
    check_error(post_search(client, "raw", big), 413, "payload_too_large")

    def chunked():  # no Content-Length: the running count must catch it
        for _ in range(20):
            yield b"x" * 4096

    r = client.post("/v1/search", content=chunked(), headers={"content-type": "image/jpeg"})
    check_error(r, 413, "payload_too_large")
    search_finds(client, "raw", 2)


def stalled_raw_upload(url: str, image: bytes) -> socket.socket:
    """A raw-body search that sends its head and half its body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /v1/search HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\nContent-Length: {len(image)}\r\n\r\n"
    )
    sock.sendall(head.encode() + image[: len(image) // 2])
    return sock


def test_stalled_raw_uploads_hold_no_slot_and_get_408(served):
    _, client, url = served
    stalled = [stalled_raw_upload(url, CROPS[i]) for i in range(3)]  # more than the in-flight bound of 2
    try:
        search_finds(client, "raw", 4)  # answered while the uploads stall
        search_finds(client, "multipart", 4)
        for sock in stalled:
            sock.settimeout(20)
            answer = sock.recv(65536).decode("latin-1")
            assert answer.startswith("HTTP/1.1 408"), answer[:200]
            assert '"request_timeout"' in answer
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("form", FORMS)
def test_request_id_server_timing_and_metrics_in_both_forms(served, form):
    _, client, _ = served
    r = post_search(client, form, CROPS[3], headers={"X-Request-ID": f"trace-{form}"})
    assert r.status_code == 200 and r.headers["x-request-id"] == f"trace-{form}"
    assert all(f"{step};dur=" in r.headers["server-timing"] for step in ("decode", "embed", "search"))
    text = client.get("/metrics").text
    assert 'reid_http_requests_total{method="POST",route="/v1/search",status="200"}' in text


def test_random_and_mutated_raw_bodies_never_get_a_500(served):
    _, client, _ = served

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        data=st.one_of(st.binary(max_size=256), mutated(CROPS[:3], max_edits=4, max_insert=8)),
        media=st.sampled_from(["image/jpeg", "image/png", "image/webp", "image/gif"]),
    )
    def upload(data, media):
        r = client.post("/v1/search", content=data, headers={"content-type": media})
        assert r.status_code in (200, 400, 415, 422), r.text
        if r.status_code != 200:
            assert r.json()["error"]["code"] in {
                "invalid_image",
                "unsupported_media_type",
                "image_too_small",
                "image_too_large",
                "bad_aspect_ratio",
                "invalid_parameters",  # an empty body: no image
            }

    upload()
    search_finds(client, "raw", 5)


def test_openapi_documents_both_forms_of_search(served):
    _, client, _ = served
    operation = client.get("/openapi.json").json()["paths"]["/v1/search"]["post"]
    content = operation["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "image/webp"} <= set(content)
    query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    assert {"top_k", "cameras", "exclude_cameras", "person_ids", "time_from", "time_to", "query_camera"} <= query


def test_the_served_variant_is_shown_in_readyz_gallery_stats_and_metrics(served):
    _, client, _ = served
    assert client.get("/readyz").json()["variant"] == "fp32"
    assert client.get("/v1/gallery").json()["variant"] == "fp32"
    line = f'reid_model_info{{backend="onnx",model_id="{FAKE_SPEC.model_id}",variant="fp32"}} 1.0'
    assert line in client.get("/metrics").text


def test_small_exact_galleries_are_searched_without_a_thread_hop(served, monkeypatch):
    _, client, _ = served
    hops: list[str] = []
    original = server.resources.ServedGallery.read

    async def counting(self, fn, *args, **kwargs):
        hops.append(fn.__name__)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(server.resources.ServedGallery, "read", counting)
    search_finds(client, "raw", 1)
    assert "search" not in hops
    monkeypatch.setattr(server.resources, "INLINE_SEARCH_FLOATS", 0)  # as if the gallery were large
    search_finds(client, "raw", 1)
    assert "search" in hops


def int8_spec(shares: bool):
    r = Retrieval(rank1=0.9, mAP=0.8)
    cross = CrossVariantGate(
        queries_in_fp32_gallery=r,
        fp32_queries_in_gallery=r,
        mAP_drop=0.1,
        rank1_drop=0.1,
        max_mAP_drop=0.01,
        passed=shares,
    )
    int8 = VariantSpec(
        name="int8",
        file="model.int8.onnx",
        runtime="onnxruntime",
        precision="int8",
        device="cpu",
        passed=True,
        cross_variant_with_fp32=cross,
    )
    fp32 = VariantSpec(
        name="fp32", file="model.onnx", runtime="onnxruntime", precision="fp32", device="any", passed=True
    )
    return FAKE_SPEC.model_copy(update={"variants": (fp32, int8)})


@pytest.mark.parametrize("shares", [True, False])
def test_a_gallery_built_by_fp32_is_served_by_int8_only_where_the_cross_variant_gate_passed(tmp_path, shares):
    folder = tmp_path / "g"
    with LiveServer(gallery_settings(folder), embedder=FakeEmbedder()) as url:
        r = httpx.post(f"{url}/v1/gallery", files={"images": CROPS[0]}, data={"person_id": "p0"})
        assert r.status_code == 201, r.text
    int8 = FakeEmbedder(int8_spec(shares))
    int8.variant = "int8"
    with LiveServer(gallery_settings(folder), embedder=int8) as url:
        r = httpx.get(f"{url}/readyz")
        if shares:
            assert r.status_code == 200 and r.json()["variant"] == "int8"
        else:
            body = check_error(r, 503, "not_ready")
            assert (
                "variant fp32" in body["error"]["message"] and "REID_MODEL_VARIANT to fp32" in body["error"]["message"]
            )


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_either_parser_refuses_an_oversized_head_and_serves_a_normal_one(tmp_path, parser):
    settings_ = gallery_settings(tmp_path / "g", http_parser=parser, max_header_bytes=2048)
    live = LiveServer(settings_, embedder=FakeEmbedder())
    with live as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Pad: {'a' * 1500}\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n".encode())
            for _ in range(4):  # the head grows past the limit a piece at a time, and never ends
                try:
                    sock.sendall(f"X-Pad: {'a' * 1000}\r\n".encode())
                except BrokenPipeError:  # refused and closed before the last pieces
                    break
                time.sleep(0.05)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
            assert sock.recv(65536) == b""  # then closed


def test_python_m_server_refuses_a_variant_the_artifact_cannot_serve(tmp_path):
    from server.settings import Settings
    from server.startup import startup_problems
    from tests.support import make_spec, write_toy_onnx

    spec = make_spec().model_copy(update={"variants": int8_spec(True).variants})
    for variant in spec.variants:
        write_toy_onnx(tmp_path / variant.file, spec)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    settings_ = Settings(artifact=tmp_path, gallery_dir=tmp_path / "g", create_gallery=True, _env_file=None)
    assert startup_problems(settings_) == []
    for name, why in [("int4", "no such variant"), ("fp16", "no such variant")]:
        problems = startup_problems(settings_.model_copy(update={"model_variant": name}))
        assert len(problems) == 1 and f"REID_MODEL_VARIANT={name}" in problems[0] and why in problems[0]
