"""The embedded store's searches never wait for a write: a snapshot being written, an IVF index being trained or
a compaction in progress are each held open (deterministically, with events) while a search runs to the end."""

import threading

import numpy as np
import pytest

from index import faiss_index, gallery_snapshots
from index import gallery as gallery_module
from index.gallery import Gallery, Record
from tests.index.vectors import clustered

MODEL = "concurrency-model"
DIM = 16
pytestmark = pytest.mark.timeout(120)  # a search that did wait would hang here, not pass


def hold(monkeypatch, target, name):
    """Replace target.name with a version that signals ``inside`` and waits for ``release`` first."""
    inside, release = threading.Event(), threading.Event()
    real = getattr(target, name)

    def held(*args, **kwargs):
        inside.set()
        release.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, held)
    return inside, release


def while_held(gallery, inside, release, write):
    """Start ``write`` on a thread, wait until it is held inside, then search; release and join."""
    errors = []

    def run():
        try:
            write()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        assert inside.wait(timeout=60), "the write never reached the held step"
        xq = clustered(3, DIM, seed=99)
        hits = gallery.search(xq, 5, model_id=MODEL)  # returns while the writer is parked
        assert writer.is_alive() and all(len(row) == 5 for row in hits)
        assert gallery.get(hits[0][0].id) is not None and gallery.stats()["count"] >= 5
    finally:
        release.set()
        writer.join()
    assert errors == []


def test_a_search_completes_while_a_snapshot_is_being_written(tmp_path, monkeypatch):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM) as g:
        g.add(clustered(50, DIM, seed=1), [Record()] * 50, model_id=MODEL)
        inside, release = hold(monkeypatch, gallery_snapshots, "write_atomic")
        while_held(g, inside, release, g.snapshot)


def test_a_search_completes_while_the_ivf_index_is_trained(tmp_path, monkeypatch):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory="IVF2,Flat") as g:
        need = g.stats()["min_train_size"]
        xb = clustered(need, DIM, seed=2)
        g.add(xb[:-1], [Record()] * (need - 1), model_id=MODEL)
        inside, release = hold(monkeypatch, faiss_index, "build_index")
        while_held(g, inside, release, lambda: g.add(xb[-1:], [Record()], model_id=MODEL))
        assert g.stats()["trained"] and len(g) == need


def test_a_search_completes_while_removals_are_compacted(tmp_path, monkeypatch):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM) as g:
        xb = clustered(300, DIM, seed=3)
        ids = g.add(xb, [Record()] * 300, model_id=MODEL)
        monkeypatch.setattr(gallery_module, "COMPACT_AT", 10)
        inside, release = hold(monkeypatch, gallery_module.faiss, "clone_index")
        while_held(g, inside, release, lambda: g.remove(ids[:10]))
        stats = g.stats()
        assert stats["tombstones"] == 0 and stats["ntotal"] == 290 == len(g)
        found = {h.id for row in g.search(xb[:10], 5, model_id=MODEL) for h in row}
        assert not found & set(ids[:10])


def test_a_removed_id_is_never_returned_once_remove_returns(tmp_path):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM) as g:
        xb = clustered(20, DIM, seed=4)
        ids = g.add(xb, [Record()] * 20, model_id=MODEL)
        g.remove(ids[:5])  # tombstones: still in the index, never served
        assert g.stats()["tombstones"] == 5
        hits = g.search(xb[:5], 15, model_id=MODEL)
        assert all(len(row) == 15 and not {h.id for h in row} & set(ids[:5]) for row in hits)
        np.testing.assert_allclose([row[0].score for row in g.search(xb[5:8], 1, model_id=MODEL)], 1.0, atol=1e-5)
