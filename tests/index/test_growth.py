"""Factory "auto" (index.growth): a gallery grown from empty through the normal add path switches from exact Flat to
IVF-SQ8 with an exact re-rank, off the write path, without refusing a search or losing an item; recall@10 against
exact search stays >= 0.95; the choice is in the stats and the manifest and survives a reopen."""

import threading

import numpy as np
import pytest

from index.gallery import Gallery
from index.growth import Policy
from index.records import Record
from index.snapshot import read_manifest
from tests.index.vectors import brute_force, clustered

MODEL = "growth-model"
DIM = 32
SWITCH = 2_000  # the lowered switch point: exact below, IVF above
FACTORY = f"auto:flat_max={SWITCH},regrow=4"


def recall_at_10(gallery, xb, ids, xq) -> float:
    _, truth = brute_force(xb, ids, xq, 10)
    found = [[h.id for h in row] for row in gallery.search(xq, 10, model_id=MODEL)]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def test_policy_picks_flat_then_ivf_sq8_and_regrows_by_a_factor():
    p = Policy.parse("auto:flat_max=1000,regrow=4")
    assert p.choose(999) == "Flat" and p.choose(1000).endswith(",SQ8")
    assert not p.due(999, "Flat", 0) and p.due(1000, "Flat", 0)
    serving = p.choose(10_000)
    assert not p.due(20_000, serving, 10_000)  # grown 2x: keep serving what was built
    assert p.due(1_000_000, serving, 10_000) and p.choose(1_000_000) != serving
    with pytest.raises(ValueError, match="unknown setting"):
        Policy.parse("auto:flat_maximum=3")


def test_grown_from_empty_it_switches_index_without_refusing_searches_or_losing_items(tmp_path):
    x = clustered(12_100, DIM, clusters=300, seed=1)  # queries from the same people as the gallery
    xb, xq = x[:12_000], x[12_000:]
    errors: list[BaseException] = []
    searched = [0]
    done = threading.Event()
    g = Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory=FACTORY)

    def search_all_along():
        while not done.is_set():
            try:
                hits = g.search(xq[:4], 10, model_id=MODEL)
                assert all(len(row) == min(10, len(g)) for row in hits) or len(g) < 10
                searched[0] += 1
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)
                return

    g.add(xb[:100], [Record(camera_id="c0")] * 100, model_id=MODEL)
    searcher = threading.Thread(target=search_all_along)
    searcher.start()
    ids = list(range(1, 101))
    for start in range(100, len(xb), 500):  # the normal add path, batch after batch
        ids += g.add(xb[start : start + 500], [Record(camera_id="c0")] * len(xb[start : start + 500]), model_id=MODEL)
        g._growth.wait()  # a build that started finishes before the next batch (the next may start another)
    done.set()
    searcher.join()
    assert not errors, errors[0]
    assert searched[0] > 0
    stats = g.stats()
    choice = stats["index_choice"]
    assert choice["factory"].startswith("IVF") and choice["factory"].endswith(",SQ8"), choice
    assert choice["recall_at_10"] >= 0.95 and choice["train_size"] > 0 and choice["items"] >= SWITCH
    assert len(g) == stats["ntotal"] == len(xb) == len(set(ids))
    assert recall_at_10(g, xb, np.asarray(ids), xq) >= 0.95
    g.close()

    manifest = read_manifest(tmp_path / "g")
    assert manifest.index_choice["factory"] == choice["factory"]
    with Gallery.open(tmp_path / "g", readonly=True) as again:
        assert again.stats()["index_choice"]["factory"] == choice["factory"]
        assert len(again) == len(xb)
        assert recall_at_10(again, xb, np.asarray(ids), xq) >= 0.95


def test_items_added_during_a_build_are_caught_up(tmp_path):
    xb = clustered(6_000, DIM, clusters=300, seed=3)
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory=FACTORY) as g:
        ids = g.add(xb[:3_000], [Record()] * 3_000, model_id=MODEL)  # due: the build starts on its thread
        ids += g.add(xb[3_000:], [Record()] * 3_000, model_id=MODEL)  # most likely while it runs
        g.remove(ids[:10])
        g._growth.wait()
        g.add(xb[:1], [Record()], model_id=MODEL)  # any later build, started by this add, finishes too
        g._growth.wait()
        assert g.stats()["index_choice"]["factory"] != "Flat"
        assert g.stats()["ntotal"] == len(g) == 6_000 - 10 + 1
        hits = g.search(xb[:20], 1, model_id=MODEL)
        assert all(row[0].id not in ids[:10] for row in hits)
        assert [row[0].id for row in hits[10:]] == ids[10:20]
