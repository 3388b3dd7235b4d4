"""The one write pipeline: per-item results (stored, duplicate, error), one bad item never sinks its batch, the
atomic mode refuses before any write, crops are kept before the add, and ids are kept on request."""

import asyncio

import pytest

from formats.images import ImageError, ImageFormatError
from index.crops import CropStore
from index.errors import ModelMismatch
from index.gallery import Gallery
from index.records import Record
from ingestion.pipeline import Item, WritePipeline
from tests.support import FAKE_SPEC, FakeEmbedder, person_crops


def _gallery(path, spec=FAKE_SPEC):
    return Gallery.create(path, model_id=spec.model_id, dim=spec.dim)


def _missing():
    raise FileNotFoundError(2, "No such file or directory")


def test_per_item_results_with_duplicates_and_bad_items(tmp_path):
    a, b, c = person_crops(3, seed=1)
    items = [
        Item("a", a, Record(person_id="p1", camera_id="1")),
        Item("junk", b"junk", Record(person_id="p1")),
        Item("a-again", a, Record(person_id="p9")),
        Item("b", lambda: b, Record(person_id="p2", metadata={"frame": 3})),
        Item("gone", _missing),
        Item("junk-again", b"junk"),
    ]
    embedder = FakeEmbedder()
    with _gallery(tmp_path / "g") as g:
        crops = CropStore.open(tmp_path / "crops")
        pipeline = WritePipeline(g, embedder, crops=crops)
        results = asyncio.run(pipeline.add(items))
        assert [r.name for r in results] == [it.name for it in items]
        assert [(r.added, r.duplicate, r.ok) for r in results] == [
            (True, False, True),
            (False, False, False),
            (False, True, True),
            (True, False, True),
            (False, False, False),
            (False, False, False),
        ]
        assert results[2].id == results[0].id and results[3].id != results[0].id
        assert isinstance(results[1].error, ImageFormatError) and results[1].reason.startswith("unsupported_media")
        assert results[5].error is results[1].error
        assert results[4].error.code == "unreadable" and results[1].id is None
        stored = g.get(results[3].id)
        assert (stored.person_id, stored.metadata, stored.content_hash) == ("p2", {"frame": 3}, results[3].content_hash)
        assert set(crops.hashes()) == {results[0].content_hash, results[3].content_hash}
        assert sum(embedder.calls) == 2  # duplicates and bad items never reach the model

        again = asyncio.run(pipeline.add([Item("c", c), Item("b-again", b)]))
        assert [(r.added, r.duplicate) for r in again] == [(True, False), (False, True)]
        assert again[1].id == results[3].id and len(g) == 3


def test_batches_stream_in_order_and_dedupe_across_batches(tmp_path):
    crops = person_crops(5, seed=2)
    items = [Item(str(i), crops[i % 5]) for i in range(12)]
    with _gallery(tmp_path / "g") as g:
        pipeline = WritePipeline(g, FakeEmbedder())

        async def run():
            return [r async for batch in pipeline.add_batches(items, batch_size=3) for r in batch]

        results = asyncio.run(run())
        assert [r.name for r in results] == [str(i) for i in range(12)]
        assert sum(r.added for r in results) == 5 and len(g) == 5
        assert all(results[i].id == results[i % 5].id for i in range(12))


def test_atomic_raises_the_first_error_named_before_any_write(tmp_path):
    good, other = person_crops(2, seed=3)
    embedder = FakeEmbedder()
    with _gallery(tmp_path / "g") as g:
        pipeline = WritePipeline(g, embedder, atomic=True)
        with pytest.raises(ImageError, match="^image 1: ") as caught:
            asyncio.run(pipeline.add([Item("image 0", good), Item("image 1", b"junk"), Item("image 2", other)]))
        assert caught.value.code == "unsupported_media_type"
        assert len(g) == 0 and embedder.calls == []


def test_keep_ids_then_new_ids_once_the_gallery_refuses(tmp_path):
    a, b, c = person_crops(3, seed=4)
    with _gallery(tmp_path / "g") as g:
        pipeline = WritePipeline(g, FakeEmbedder(), keep_ids=True)
        first = asyncio.run(pipeline.add([Item("a", a, Record(id=7)), Item("b", b, Record(id=9))]))
        assert [r.id for r in first] == [7, 9] and g.get(7).content_hash == first[0].content_hash
        taken = asyncio.run(pipeline.add([Item("c", c, Record(id=7))]))  # 7 is taken: a new id
        assert taken[0].added and taken[0].id not in (7, 9) and not pipeline.keep_ids


def test_a_gallery_of_another_model_is_refused(tmp_path):
    with Gallery.create(tmp_path / "g", model_id="other", dim=FAKE_SPEC.dim) as g, pytest.raises(ModelMismatch):
        WritePipeline(g, FakeEmbedder())
