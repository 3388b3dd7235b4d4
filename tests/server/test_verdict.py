"""The search verdict through the real app under uvicorn: the operating point REID_TARGET_FAR picks, where its
calibration came from (gallery before artifact before an older pair-level threshold), and the client's view."""

import subprocess
import sys

import httpx
import pytest

from client import ReIDClient
from formats.spec import Calibration, OperatingPoint
from index.gallery import Gallery
from tests.support import FAKE_SPEC, FakeEmbedder, LiveServer, gallery_settings, person_crops

CROPS = person_crops(8, seed=3)
ENROLLED = CROPS[:6]
STRANGER = CROPS[7]


def point(far: float, threshold: float, dir_: float, reliable: bool = True) -> OperatingPoint:
    return OperatingPoint(
        target_far=far,
        threshold=threshold,
        dir=dir_,
        far=round(far * 0.9, 6),
        absent_identities=400,
        absent_probes=1600,
        enrolled_probes=1600,
        reliable=reliable,
    )


ARTIFACT = Calibration(
    source="artifact",
    method="identity-split",
    top_k=10,
    gallery_identities=80,
    gallery_crops=650,
    dataset="synth",
    operating_points=(point(0.1, 0.55, 0.8), point(0.01, 0.75, 0.5), point(0.001, 0.9, 0.2, reliable=False)),
)
GALLERY = Calibration(
    source="gallery",
    method="leave-one-identity-out",
    top_k=10,
    gallery_identities=6,
    gallery_crops=6,
    operating_points=(point(0.1, 0.6, 0.7),),
)
CALIBRATED_SPEC = FAKE_SPEC.model_copy(update={"calibration": ARTIFACT})


def serve(tmp_path, spec=CALIBRATED_SPEC, gallery_calibration: Calibration | None = None, **settings) -> LiveServer:
    """A server over a gallery of six people (one crop each); the gallery calibrated when asked."""
    path = tmp_path / "gallery"
    if gallery_calibration is not None:
        with Gallery.create(path, model_id=spec.model_id, dim=spec.dim) as gallery:
            gallery.set_calibration(gallery_calibration.model_dump(mode="json"))
    return LiveServer(gallery_settings(path, **settings), embedder=FakeEmbedder(spec))


def enrol(client: httpx.Client) -> None:
    people = [f"p{i}" for i in range(len(ENROLLED))]
    r = client.post("/v1/gallery", files=[("images", c) for c in ENROLLED], data={"person_id": people})
    assert r.status_code == 201, r.text


def search(client: httpx.Client, crop: bytes) -> dict:
    r = client.post("/v1/search", files={"image": crop})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_answer_carries_the_verdict_at_the_default_target_far(tmp_path):
    with serve(tmp_path) as url, httpx.Client(base_url=url, timeout=30) as client:
        enrol(client)
        known, stranger = search(client, ENROLLED[2]), search(client, STRANGER)
    for body in (known, stranger):
        assert body["target_far"] == 0.01 and body["threshold"] == 0.75
        c = body["calibration"]
        assert (c["source"], c["method"], c["far"], c["dir"], c["measured_far"]) == (
            "artifact",
            "identity-split",
            0.01,
            0.5,
            0.009,
        )
        assert (c["gallery_identities"], c["gallery_crops"], c["exact"], c["reliable"]) == (80, 650, True, True)
        assert c["note"] is None
        best = body["identities"][0]["score"]
        assert body["verdict"] == ("match" if best >= body["threshold"] else "unknown")
    assert known["verdict"] == "match" and known["identities"][0]["person_id"] == "p2"
    assert stranger["verdict"] == "unknown"


@pytest.mark.parametrize(
    ("target", "threshold", "exact"),
    [(0.1, 0.55, True), (0.05, 0.75, False), (0.001, 0.9, True)],
)
def test_the_target_far_picks_its_point_or_the_nearest_stricter_one(tmp_path, target, threshold, exact):
    with serve(tmp_path, target_far=target) as url, httpx.Client(base_url=url, timeout=30) as client:
        enrol(client)
        body = search(client, ENROLLED[0])
    assert (body["target_far"], body["threshold"], body["calibration"]["exact"]) == (target, threshold, exact)
    note = body["calibration"]["note"] or ""
    assert ("nearest stricter one (FAR 0.01)" in note) == (not exact)
    if target == 0.001:  # measured on too few absent identities: the answer says so
        assert not body["calibration"]["reliable"] and "at least 3000" in note


def test_a_target_stricter_than_every_point_gives_no_verdict(tmp_path):
    only_loose = FAKE_SPEC.model_copy(update={"calibration": GALLERY.model_copy(update={"source": "artifact"})})
    with serve(tmp_path, spec=only_loose, target_far=0.01) as url, httpx.Client(base_url=url, timeout=30) as client:
        enrol(client)
        body = search(client, ENROLLED[0])
    # FAKE_SPEC's pair-level threshold is the last resort, and the answer says what it is
    assert body["calibration"]["source"] == "pair-threshold" and body["threshold"] == FAKE_SPEC.threshold.score
    assert "no operating point at FAR 0.01 or below" in body["calibration"]["note"]
    assert "not calibrated for identities" in body["calibration"]["note"]


def test_the_gallerys_calibration_comes_before_the_artifacts(tmp_path):
    with serve(tmp_path, gallery_calibration=GALLERY, target_far=0.1) as url, httpx.Client(base_url=url) as client:
        enrol(client)
        body = search(client, ENROLLED[1])
    c = body["calibration"]
    assert (c["source"], c["method"], c["gallery_identities"], body["threshold"]) == (
        "gallery",
        "leave-one-identity-out",
        6,
        0.6,
    )


def test_a_gallery_without_a_point_for_the_target_falls_back_to_the_artifact(tmp_path):
    with serve(tmp_path, gallery_calibration=GALLERY, target_far=0.01) as url, httpx.Client(base_url=url) as client:
        enrol(client)
        body = search(client, ENROLLED[1])
    assert body["calibration"]["source"] == "artifact" and body["threshold"] == 0.75
    assert "the gallery's calibration has no operating point at FAR 0.01" in body["calibration"]["note"]


def test_an_older_model_with_only_a_pair_threshold_still_answers_and_says_so(tmp_path):
    with serve(tmp_path, spec=FAKE_SPEC) as url, httpx.Client(base_url=url, timeout=30) as client:
        enrol(client)
        body = search(client, ENROLLED[3])
    assert body["verdict"] == "match" and body["threshold"] == FAKE_SPEC.threshold.score
    c = body["calibration"]
    assert c["source"] == "pair-threshold" and c["far"] is None and not c["reliable"]


def test_no_calibration_and_no_threshold_gives_a_null_verdict(tmp_path):
    bare = FAKE_SPEC.model_copy(update={"threshold": None})
    with serve(tmp_path, spec=bare) as url, httpx.Client(base_url=url, timeout=30) as client:
        enrol(client)
        body = search(client, ENROLLED[3])
    assert (body["verdict"], body["threshold"], body["calibration"]) == (None, None, None)
    assert body["target_far"] == 0.01


def test_the_client_parses_the_verdict_fields_and_the_schema_documents_them(tmp_path):
    with serve(tmp_path, target_far=0.05) as url, ReIDClient(url) as reid, httpx.Client(base_url=url) as client:
        enrol(client)
        spec = client.get("/openapi.json").json()
        result = reid.search(ENROLLED[4])
    schema = spec["components"]["schemas"]
    answer = spec["paths"]["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert result.verdict == "match" and result.target_far == 0.05 and result.threshold == 0.75
    c = result.calibration
    assert (c.source, c.far, c.dir, c.exact, c.gallery_identities) == ("artifact", 0.01, 0.5, False, 80)
    assert {"target_far", "calibration", "threshold"} <= set(schema[answer["$ref"].rsplit("/", 1)[1]]["properties"])
    assert {"source", "dir", "measured_far", "gallery_identities", "note"} <= set(
        schema["VerdictCalibration"]["properties"]
    )


@pytest.mark.parametrize("bad", [0, 1, -0.1])
def test_the_target_far_setting_is_a_rate(tmp_path, bad):
    with pytest.raises(ValueError, match="target_far"):
        gallery_settings(tmp_path, target_far=bad)


def test_reid_search_prints_the_operating_point(tmp_path):
    crop = tmp_path / "q.png"
    crop.write_bytes(ENROLLED[5])
    with serve(tmp_path, target_far=0.05) as url, httpx.Client(base_url=url, timeout=30) as client:
        enrol(client)
        out = subprocess.run(
            [sys.executable, "-m", "client.cli", "--url", url, "search", str(crop)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    assert "verdict: match (threshold 0.750)" in out.stdout
    assert "operating point: FAR 0.01 (target 0.05), DIR 0.500, measured FAR 0.0090, from the artifact" in out.stdout
    assert "note: no operating point was calibrated for FAR 0.05; the nearest stricter one" in out.stdout
