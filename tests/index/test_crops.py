"""Kept crops: the content-addressed store (index/crops.py), and the API keeping crops on add, serving them at
GET /v1/gallery/{id}/image, refusing with 507 when full and forgetting them on delete."""

import hashlib
import io
import os
import threading

import httpx
import pytest
from PIL import Image

from index.crops import CropStore, CropStoreFull, check_hash, sniff
from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

PNGS = person_crops(4, seed=7)


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(person_crops(1, seed=seed)[0])).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def webp(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(person_crops(1, seed=seed)[0])).save(buf, "WEBP")
    return buf.getvalue()


def test_put_get_exists_size_and_the_layout_on_disk(tmp_path):
    store = CropStore.open(tmp_path / "crops")
    blobs = [PNGS[0], jpeg(1), webp(2)]
    digests = [store.put(b) for b in blobs]
    assert digests == [hashlib.sha256(b).hexdigest() for b in blobs]
    for digest, data, media, suffix in zip(
        digests, blobs, ["image/png", "image/jpeg", "image/webp"], [".png", ".jpg", ".webp"], strict=True
    ):
        assert store.exists(digest)
        assert store.get(digest) == (data, media)
        assert (tmp_path / "crops" / digest[:2] / f"{digest}{suffix}").read_bytes() == data
    assert store.size() == sum(map(len, blobs)) and len(store) == 3
    assert sorted(store.hashes()) == sorted(digests)
    assert store.get("0" * 64) is None and not store.exists("f" * 64)
    # Keeping the same bytes again writes nothing and counts nothing.
    assert store.put(blobs[0]) == digests[0] and store.size() == sum(map(len, blobs))
    # No temporary files are left behind, and a new process counts what is on disk.
    assert not list((tmp_path / "crops").rglob(".*"))
    assert CropStore.open(tmp_path / "crops").size() == store.size()


def test_only_image_bytes_are_kept():
    assert [sniff(PNGS[0]), sniff(jpeg(0)), sniff(webp(0)), sniff(b"GIF89a....")] == ["png", "jpeg", "webp", None]


def test_the_cap_refuses_the_whole_batch_before_writing(tmp_path):
    store = CropStore.open(tmp_path / "crops", max_bytes=len(PNGS[0]) + len(PNGS[1]))
    store.put_many(PNGS[:2])
    with pytest.raises(CropStoreFull, match="cap"):
        store.put_many([PNGS[0], PNGS[2]])  # one already kept, one new: the new one does not fit
    assert not store.exists(hashlib.sha256(PNGS[2]).hexdigest())
    assert len(store) == 2 and store.size() == len(PNGS[0]) + len(PNGS[1])
    store.put(PNGS[1])  # bytes already kept still "fit"
    assert store.remove(hashlib.sha256(PNGS[0]).hexdigest()) and store.size() == len(PNGS[1])
    store.put(PNGS[0])  # room again after a remove
    assert not store.remove("a" * 64)


@pytest.mark.parametrize("name", ["../" * 3 + "etc/passwd", "AB" * 32, "a" * 63, "a" * 64 + "/x", ""])
def test_names_come_only_from_a_sha256(tmp_path, name):
    store = CropStore.open(tmp_path / "crops")
    with pytest.raises(ValueError, match="sha256"):
        store.get(name)
    with pytest.raises(ValueError):
        check_hash(name)


def test_symlinks_in_the_store_are_not_followed(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNGS[0])
    digest = hashlib.sha256(PNGS[0]).hexdigest()
    (tmp_path / "crops" / digest[:2]).mkdir(parents=True)
    os.symlink(secret, tmp_path / "crops" / digest[:2] / f"{digest}.png")
    store = CropStore.open(tmp_path / "crops")
    assert store.get(digest) is None and store.size() == 0


def test_copy_from_links_or_copies_within_the_cap(tmp_path):
    src = CropStore.open(tmp_path / "a")
    digest = src.put(PNGS[0])
    dst = CropStore.open(tmp_path / "b", max_bytes=len(PNGS[0]))
    assert dst.copy_from(src, digest) and dst.get(digest) == src.get(digest)
    assert dst.copy_from(src, digest)  # again: nothing to do
    assert not dst.copy_from(src, hashlib.sha256(b"absent").hexdigest())
    other = src.put(PNGS[1])
    with pytest.raises(CropStoreFull):
        dst.copy_from(src, other)


def test_concurrent_puts_of_the_same_bytes_keep_one_file(tmp_path):
    store = CropStore.open(tmp_path / "crops")
    threads = [threading.Thread(target=store.put, args=(PNGS[0],)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 1 and store.size() == len(PNGS[0])


# -- through the API ------------------------------------------------------------------------------------------


def test_api_keeps_crops_serves_them_and_forgets_them_on_delete(tmp_path):
    settings = gallery_settings(tmp_path / "gallery", keep_crops=True)
    with LiveServer(settings, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url, timeout=30) as client:
        blobs = [PNGS[0], jpeg(3)]
        r = client.post("/v1/gallery", files=[("images", b) for b in blobs], data={"person_id": ["a", "b"]})
        assert r.status_code == 201, r.text
        ids = r.json()["ids"]
        for item_id, data, media in zip(ids, blobs, ["image/png", "image/jpeg"], strict=True):
            got = client.get(f"/v1/gallery/{item_id}/image")
            assert got.status_code == 200 and got.content == data
            assert got.headers["content-type"] == media
        digest = hashlib.sha256(blobs[0]).hexdigest()
        assert (tmp_path / "gallery" / "crops" / digest[:2] / f"{digest}.png").read_bytes() == blobs[0]

        missing = client.get("/v1/gallery/999/image")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.delete(f"/v1/gallery/{ids[0]}").status_code == 200
        assert not (tmp_path / "gallery" / "crops" / digest[:2] / f"{digest}.png").exists()
        assert client.get(f"/v1/gallery/{ids[0]}/image").status_code == 404

        spec = client.get("/openapi.json").json()["paths"]["/v1/gallery/{item_id}/image"]["get"]
        assert set(spec["responses"]["200"]["content"]) == {"image/jpeg", "image/png", "image/webp"}
        assert "404" in spec["responses"]
        assert "507" in client.get("/openapi.json").json()["paths"]["/v1/gallery"]["post"]["responses"]


def test_api_without_keeping_answers_404_with_the_error_schema(tmp_path):
    settings = gallery_settings(tmp_path / "gallery")  # REID_KEEP_CROPS off (the default)
    with LiveServer(settings, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url, timeout=30) as client:
        item_id = client.post("/v1/gallery", files={"images": PNGS[0]}, data={"person_id": "a"}).json()["ids"][0]
        r = client.get(f"/v1/gallery/{item_id}/image")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert r.json()["request_id"]
    assert not (tmp_path / "gallery" / "crops").exists()


def test_api_refuses_with_507_when_the_crop_store_is_full_and_adds_nothing(tmp_path):
    cap = len(PNGS[0]) + len(PNGS[1])
    settings = gallery_settings(tmp_path / "gallery", keep_crops=True, crops_dir=tmp_path / "kept", crops_max_bytes=cap)
    with LiveServer(settings, embedder=FakeEmbedder()) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/gallery", files=[("images", b) for b in PNGS[:2]], data={"person_id": "a"})
        assert r.status_code == 201, r.text
        r = client.post("/v1/gallery", files=[("images", b) for b in PNGS[2:4]], data={"person_id": "b"})
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "insufficient_storage" and "full" in r.json()["error"]["message"]
        assert client.get("/v1/gallery").json()["count"] == 2  # neither image of the refused request was added
        assert len(CropStore.open(tmp_path / "kept")) == 2
        assert not (tmp_path / "gallery" / "crops").exists()  # REID_CROPS_DIR is where they go


def test_keeping_crops_of_a_milvus_gallery_needs_a_crops_folder(tmp_path):
    with pytest.raises(ValueError, match="REID_CROPS_DIR"):
        gallery_settings(tmp_path / "g", keep_crops=True, gallery_uri="milvus://127.0.0.1:19530/people")
    kept = gallery_settings(
        tmp_path / "g", keep_crops=True, gallery_uri="milvus://127.0.0.1:19530/people", crops_dir=tmp_path / "kept"
    )
    assert kept.crops_root == tmp_path / "kept"
    assert (
        gallery_settings(tmp_path / "g", gallery_uri=str(tmp_path / "site")).crops_root == tmp_path / "site" / "crops"
    )
    assert gallery_settings(tmp_path / "g").crops_root == tmp_path / "g" / "crops"
