"""`reid index FOLDER --gallery DIR` writes through ingestion.bulk; the API then serves that gallery, and finds
each indexed file at rank 1 with a cosine of 1: bulk indexing and the API decode (EXIF included) identically."""

import hashlib
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from client.cli import main
from server.settings import Settings
from tests.support import LiveServer, person_crops


def exif_rotated_png(data: bytes) -> bytes:
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 8  # viewers turn it 90 degrees counter-clockwise: store it turned the other way
    buf = io.BytesIO()
    Image.fromarray(np.rot90(rgb, -1)).save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.slow
def test_bulk_indexed_gallery_is_searchable_through_the_api(tiny_artifact, tmp_path):
    crops = person_crops(3, seed=31)
    folder = tmp_path / "crops"
    folder.mkdir()
    files = {
        "0007_c1s1_000010_01.png": crops[0],
        "0007_c2s1_000020_01.png": crops[1],
        "0009_c3s1_000030_01.png": exif_rotated_png(crops[2]),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    gallery = tmp_path / "gallery"
    assert main(["index", str(folder), "--gallery", str(gallery), "--artifact", str(tiny_artifact)]) == 0

    settings = Settings(
        backend="onnx", artifact=tiny_artifact, gallery_dir=gallery, create_gallery=True, _env_file=None
    )
    with LiveServer(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/gallery").json()["count"] == len(files)
        for name, data in files.items():
            body = client.post("/v1/search", files={"image": data}, data={"top_k": "3"}).json()
            best = body["hits"][0]
            assert best["score"] == pytest.approx(1.0, abs=1e-4), name
            assert (best["person_id"], best["camera_id"]) == (name[:4], name[6])
            item = client.get(f"/v1/gallery/{best['id']}").json()
            assert item["content_hash"] == hashlib.sha256(data).hexdigest()
        again = client.post("/v1/gallery", files={"images": files["0007_c1s1_000010_01.png"]}, data={"person_id": "x"})
        assert again.json()["items"][0]["duplicate"] is True  # the API and bulk hash the same way
