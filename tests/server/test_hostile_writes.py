"""Nothing a client writes, and nothing an older version stored, can break a read; a gallery that lost its log or
holds another gallery's snapshot is never served as if nothing happened.

Through the HTTP API under uvicorn with the deterministic FakeEmbedder: metadata bounds at the door, rows with
hostile values written straight into the SQLite log and read back through GET and search, a missing log, a
snapshot copied from another gallery, and property tests over sequences of accepted writes.
"""

import itertools
import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index.metadata import UNREADABLE, MetadataError, check
from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

CROPS = person_crops(12, seed=7)


def add(client: httpx.Client, crops: list[bytes], person_ids: list[str], **fields) -> list[int]:
    r = client.post("/v1/gallery", files=[("images", c) for c in crops], data={"person_id": person_ids, **fields})
    assert r.status_code == 201, r.text
    return r.json()["ids"]


def search(client: httpx.Client, crop: bytes, **fields) -> dict:
    r = client.post("/v1/search", files={"image": crop}, data={"top_k": "20", **fields})
    assert r.status_code == 200, r.text
    return r.json()


def make_gallery(folder: Path, crops: list[bytes], people: list[str]) -> list[int]:
    with LiveServer(gallery_settings(folder), embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as client:
        return add(client, crops, people, camera_id="c1", captured_at="100")


# -- bounds at the door ---------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


REFUSED = {
    "nested 300 levels": (nested(300), "deeper than 8"),
    "nested 9 levels": (nested(9), "deeper than 8"),
    "nested arrays": ('{"a": ' + "[" * 20 + "]" * 20 + "}", "deeper than 8"),
    "too many keys": (json.dumps({f"k{i}": i for i in range(300)}), "more than 256"),
    "long key": (json.dumps({"k" * 200: 1}), "key in metadata is longer than 128"),
    "long value": (json.dumps({"k": "v" * 5000}), "longer than 4096"),
    "too many bytes": (json.dumps({f"k{i}": "v" * 4000 for i in range(5)}), "at most 16384"),
    "integer over 64 bits": ('{"n": 18446744073709551616}', "64 bits"),
    "lone surrogate": ('{"s": "\\ud800"}', "not valid Unicode"),
    "NaN": ('{"x": NaN}', "not valid JSON"),
    "overflowing float": ('{"x": 1e999}', "not valid JSON"),
    "not an object": ("[1, 2]", "must be a JSON object"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "gallery"
    with LiveServer(gallery_settings(folder), embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as client:
        yield client


@pytest.mark.parametrize("case", list(REFUSED))
def test_metadata_beyond_the_bounds_is_refused(served, case):
    text, reason = REFUSED[case]
    r = served.post("/v1/gallery", files={"images": CROPS[0]}, data={"person_id": "p", "metadata": text})
    # 422: not the JSON object the schema asks for; 400: an object beyond the server's configured bounds
    assert r.status_code == (422 if reason in ("not valid JSON", "must be a JSON object") else 400), r.text
    assert r.json()["error"]["code"] == "invalid_parameters"
    assert "metadata of image 0" in r.json()["error"]["message"] and reason in r.json()["error"]["message"]
    assert served.get("/v1/gallery").json()["count"] == 0  # nothing was written


def test_metadata_at_the_bounds_is_accepted_and_read_back(served):
    at_bounds = {
        "deep": json.loads(nested(7)),  # 7 levels inside the outer object: 8 in all
        "key" * 42 + "k1": "v" * 4096,
        "n": [2**63 - 1, -(2**63), 1.7976931348623157e308, 5e-324, -0.0],
        "unicode": "\u00e9\u4e2d\U0001f600\u0000\u202e",
    }
    [gid] = add(served, [CROPS[1]], ["p1"], metadata=json.dumps(at_bounds))
    assert served.get(f"/v1/gallery/{gid}").json()["metadata"] == at_bounds
    assert search(served, CROPS[1])["hits"][0]["metadata"] == at_bounds
    served.delete(f"/v1/gallery/{gid}")


def test_the_bounds_are_settings(tmp_path):
    settings = gallery_settings(tmp_path / "g", metadata_max_depth=2, metadata_max_items=3)
    with LiveServer(settings, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as client:
        ok = {"a": {"b": 1}, "c": 2}
        [gid] = add(client, [CROPS[0]], ["p"], metadata=json.dumps(ok))
        assert client.get(f"/v1/gallery/{gid}").json()["metadata"] == ok
        for text in ('{"a": {"b": {"c": 1}}}', '{"a": [1, 2, 3]}'):
            r = client.post("/v1/gallery", files={"images": CROPS[1]}, data={"person_id": "p", "metadata": text})
            assert r.status_code == 400, text


# -- whatever an older version stored -------------------------------------------------------------------------

# (column, SQL expression, parameter): values a version without today's checks could have left in the log.
STORED = {
    "metadata nested 300 levels": ("metadata", "?", nested(300)),
    "metadata nested 5000 levels": ("metadata", "?", nested(5000)),
    "metadata with a 5000-digit integer": ("metadata", "?", '{"n": ' + "9" * 5000 + "}"),
    "metadata with a 400-digit integer": ("metadata", "?", '{"n": ' + "9" * 400 + "}"),
    "metadata with NaN": ("metadata", "?", '{"x": NaN}'),
    "metadata with Infinity": ("metadata", "?", '{"x": -Infinity, "y": 1e999}'),
    "metadata with a lone surrogate": ("metadata", "?", '{"s": "\\udc80"}'),
    "metadata not UTF-8": ("metadata", "CAST(? AS TEXT)", b'{"s": "\xff\xfe"}'),
    "metadata a blob": ("metadata", "?", b"\x00\x01binary"),
    "metadata a JSON list": ("metadata", "?", "[1, 2, 3]"),
    "metadata a JSON string": ("metadata", "?", '"text"'),
    "metadata a number": ("metadata", "?", 42),
    "metadata torn JSON": ("metadata", "?", '{"a": [1, 2'),
    "metadata empty text": ("metadata", "?", ""),
    "captured_at as text": ("captured_at", "?", "yesterday"),
    "captured_at infinite": ("captured_at", "?", float("inf")),
    "added_at as text": ("added_at", "?", "soon"),
    "person_id not UTF-8": ("person_id", "CAST(? AS TEXT)", b"p\xc3\x28"),
    "camera_id a blob": ("camera_id", "?", b"\xff\x00"),
    "track_id a number": ("track_id", "?", 7.5),
}
COPIED = "person_id, camera_id, captured_at, track_id, source, content_hash, metadata, added_at, vector, vector_crc"


def insert_stored(db: Path, source_id: int, column: str, expression: str, value) -> int:
    """A copy of row ``source_id`` (same vector) with one column set to ``value``, as an older version wrote rows:
    without a record checksum."""
    with sqlite3.connect(db) as conn:
        picks = ", ".join(f"{expression} AS {c}" if c == column else c for c in COPIED.split(", "))
        cur = conn.execute(f"INSERT INTO items ({COPIED}) SELECT {picks} FROM items WHERE id = ?", (value, source_id))
        return cur.lastrowid


def test_no_stored_value_fails_a_get_or_a_search(tmp_path):
    folder = tmp_path / "gallery"
    [first, second] = make_gallery(folder, CROPS[:2], ["p0", "p1"])
    inserted = {case: insert_stored(folder / "gallery.sqlite", first, *spec) for case, spec in STORED.items()}
    with (
        LiveServer(gallery_settings(folder), embedder=FakeEmbedder()) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        for case, gid in inserted.items():
            r = client.get(f"/v1/gallery/{gid}")
            assert r.status_code == 200, (case, r.text)
            item = r.json()
            assert isinstance(item["metadata"], dict), case
            if STORED[case][0] == "metadata" and case != "metadata empty text":
                # Only a value that reads back unchanged is served as itself; the rest get the marker.
                assert set(item["metadata"]) == {UNREADABLE} or case == "metadata with a 400-digit integer", case
        assert client.get("/v1/gallery/" + str(inserted["metadata with a 400-digit integer"])).json()["metadata"] == {
            "n": int("9" * 400)
        }
        body = search(client, CROPS[0], top_k="50")
        assert {h["id"] for h in body["hits"]} >= set(inserted.values()) | {first}
        assert search(client, CROPS[0], time_from="0")["hits"]  # time windows skip the unusable capture times
        assert search(client, CROPS[1])["hits"][0]["id"] == second
        by_camera = search(client, CROPS[0], cameras="c1")["hits"]
        assert inserted["camera_id a blob"] not in {h["id"] for h in by_camera}


# -- a missing log, a foreign snapshot ------------------------------------------------------------------------


def test_a_gallery_that_lost_its_log_is_not_ready_until_the_operator_allows_an_empty_one(tmp_path):
    folder = tmp_path / "gallery"
    make_gallery(folder, CROPS[:5], [f"p{i}" for i in range(5)])
    (folder / "gallery.sqlite").unlink()
    with LiveServer(gallery_settings(folder), embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        message = r.json()["error"]["message"]
        assert "gallery.sqlite" in message and "5 items" in message and "REID_GALLERY_ALLOW_MISSING_LOG" in message
        assert str(tmp_path) not in message  # probes are unauthenticated: no host paths
        assert client.post("/v1/search", files={"image": CROPS[0]}).status_code == 503
        assert client.post("/v1/gallery", files={"images": CROPS[0]}, data={"person_id": "x"}).status_code == 503
    assert not (folder / "gallery.sqlite").exists()  # refusing wrote nothing

    allowed = gallery_settings(folder, gallery_allow_missing_log=True)
    with LiveServer(allowed, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as client:
        assert client.get("/readyz").json()["gallery_size"] == 0
        assert search(client, CROPS[0])["hits"] == []  # the old snapshot is not served against the new log
        [gid] = add(client, [CROPS[6]], ["new"])
        assert search(client, CROPS[6])["hits"][0]["id"] == gid


def test_a_snapshot_copied_from_another_gallery_is_not_served(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    ids = make_gallery(mine, CROPS[:6], [f"mine{i}" for i in range(6)])
    assert make_gallery(other, CROPS[6:], [f"other{i}" for i in range(6)]) == ids  # same model, same ids
    for f in mine.glob("index.*.faiss"):
        f.unlink()
    for f in [*other.glob("index.*.faiss"), other / "manifest.json"]:
        shutil.copy2(f, mine / f.name)
    with LiveServer(gallery_settings(mine), embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as client:
        for i, gid in enumerate(ids):
            best = search(client, CROPS[i])["hits"][0]
            assert (best["id"], best["person_id"]) == (gid, f"mine{i}")
            assert best["score"] == pytest.approx(1.0, abs=1e-5)
        for crop in CROPS[6:]:  # the other gallery's people are not in this one
            assert search(client, crop)["hits"][0]["score"] < 0.99


# -- property tests: any accepted write reads back ------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)  # what a multipart form can carry
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=30)
)
KEYS = st.text(st.characters(codec="utf-8"), max_size=12)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=20
)


def within_the_bounds(value: dict) -> bool:
    try:
        check(value, gallery_settings(Path("unused")).metadata_limits)  # the default bounds
    except MetadataError:
        return False
    return True


METADATA = st.dictionaries(KEYS, JSON_VALUES, max_size=6).filter(within_the_bounds)
CAPTURED = st.floats(allow_nan=False, allow_infinity=False)
IMAGE = st.fixed_dictionaries(
    {
        "person_id": TEXT,
        "camera_id": st.none() | TEXT,
        "track_id": st.none() | TEXT,
        "captured_at": st.none() | CAPTURED,
        "metadata": METADATA,
    }
)


def fresh_crops():
    """An endless supply of distinct crops (the content-hash de-duplication would merge repeats)."""
    for seed in itertools.count(1000):
        yield person_crops(1, seed=seed)[0]


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("property") / "gallery"
    with (
        LiveServer(gallery_settings(folder, max_images_per_request=4), embedder=FakeEmbedder()) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client, fresh_crops()


def expected_item(image: dict) -> dict:
    return {
        "person_id": image["person_id"],
        "camera_id": image["camera_id"] or None,
        "track_id": image["track_id"] or None,
        "captured_at": image["captured_at"],
        "metadata": image["metadata"],
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.lists(IMAGE, min_size=1, max_size=3), min_size=1, max_size=3), remove_first=st.booleans())
def test_every_accepted_write_reads_back_through_get_and_search(pool_server, writes, remove_first):
    client, crops = pool_server
    stored: dict[int, tuple[bytes, dict]] = {}
    for batch in writes:
        images = [next(crops) for _ in batch]
        data = {"person_id": [], "camera_id": [], "track_id": [], "captured_at": [], "metadata": []}
        for image in batch:  # per-image lists; a None is sent as "" (unknown) where the API allows it
            data["person_id"].append(image["person_id"])
            data["camera_id"].append(image["camera_id"] or "")
            data["track_id"].append(image["track_id"] or "")
            data["metadata"].append(json.dumps(image["metadata"]))
        if all(image["captured_at"] is not None for image in batch):
            data["captured_at"] = [repr(image["captured_at"]) for image in batch]
        else:
            del data["captured_at"]
            batch = [{**image, "captured_at": None} for image in batch]
        ids = add(client, images, data.pop("person_id"), **data)
        stored.update({gid: (crop, image) for gid, crop, image in zip(ids, images, batch, strict=True)})
    if remove_first:
        gone = next(iter(stored))
        assert client.delete(f"/v1/gallery/{gone}").status_code == 200
        assert client.get(f"/v1/gallery/{gone}").status_code == 404
        del stored[gone]
    for gid, (crop, image) in stored.items():
        r = client.get(f"/v1/gallery/{gid}")
        assert r.status_code == 200, r.text
        item = r.json()
        assert {k: item[k] for k in expected_item(image)} == expected_item(image)
        top = search(client, crop)["hits"][0]
        assert top["id"] == gid and top["score"] == pytest.approx(1.0, abs=1e-5)
        assert {k: top[k] for k in expected_item(image)} == expected_item(image)
        if image["captured_at"] is not None:
            t = repr(image["captured_at"])
            assert gid in {h["id"] for h in search(client, crop, time_from=t, time_to=t)["hits"]}
