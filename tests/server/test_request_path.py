"""The search request path: a person-sized query is decoded on the event loop (no thread hop), a large image
still in the threadpool, and both answer alike."""

import io

import httpx
import numpy as np
import pytest
from PIL import Image

import server.resources
from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops, png_bytes


@pytest.fixture
def threadpool_calls(monkeypatch):
    """Names of the functions Resources sends to the threadpool during the test."""
    calls: list[str] = []
    original = server.resources.run_in_threadpool

    async def counting(fn, *args, **kwargs):
        calls.append(getattr(fn, "__qualname__", repr(fn)))  # a partial has none
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(server.resources, "run_in_threadpool", counting)
    return calls


def test_query_crop_is_decoded_without_a_thread_hop_and_large_images_are_not(tmp_path, threadpool_calls):
    crop = person_crops(1, seed=3)[0]
    # the same picture, 5x larger on each side (more pixels than INLINE_DECODE_PIXELS): same model input
    small = np.asarray(Image.open(io.BytesIO(crop)))
    large = png_bytes(np.asarray(Image.fromarray(small).resize((64 * 5, 128 * 5), Image.NEAREST)))
    assert 64 * 5 * 128 * 5 > server.resources.INLINE_DECODE_PIXELS >= 64 * 128

    with LiveServer(gallery_settings(tmp_path / "g"), embedder=FakeEmbedder()) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/gallery", files={"images": crop}, data={"person_id": "p1"})
        assert r.status_code == 201, r.text
        adds = len(threadpool_calls)
        assert adds >= 1  # batch adds still decode in the threadpool: a batch must not hold up the loop

        r = c.post("/v1/search", files={"image": crop}, data={"top_k": "1"})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert len(threadpool_calls) == adds  # decoded inline

        r = c.post("/v1/search", files={"image": large}, data={"top_k": "1"})
        assert r.status_code == 200, r.text
        assert r.json()["identities"][0]["person_id"] == "p1"
        assert len(threadpool_calls) == adds + 1  # decoded in the threadpool

        r = c.post("/v1/search", files={"image": b"\xff\xd8\xff\xe0 not really a jpeg"})
        assert r.status_code == 400, r.text  # an unreadable header takes the threadpool path and its typed error
        assert r.json()["error"]["code"] == "invalid_image"
