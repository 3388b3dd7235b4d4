"""Filters applied inside the faiss search (index.filters_faiss): camera, person and time filters become an id
selector from the in-memory column index; recall@10 of filtered search against exact filtered search at filters
keeping 1 %, 10 % and 50 % of the gallery, on exact Flat and on the IVF-SQ8 index "auto" grows into."""

import numpy as np
import pytest

from index import faiss_index
from index.gallery import Gallery
from index.records import Record, SearchFilter
from tests.index.vectors import brute_force, clustered

MODEL = "filter-model"
DIM = 32
N = 20_000
CAMERAS = 100  # item i is seen by camera i % 100: one camera keeps 1 %


def records(n: int) -> list[Record]:
    return [Record(camera_id=f"c{i % CAMERAS}", person_id=f"p{i % 997}", captured_at=float(i)) for i in range(n)]


@pytest.fixture(scope="module", params=["Flat", "auto:flat_max=2000"])
def gallery(request, tmp_path_factory):
    x = clustered(N + 50, DIM, clusters=400, seed=7)
    g = Gallery.create(tmp_path_factory.mktemp("g") / "g", model_id=MODEL, dim=DIM, factory=request.param)
    ids = []
    for start in range(0, N, 5_000):
        ids += g.add(x[start : start + 5_000], records(N)[start : start + 5_000], model_id=MODEL)
        if g._growth is not None:
            g._growth.wait()
    yield g, x[:N], np.asarray(ids), x[N:]
    g.close()


def keep(f: SearchFilter, n: int) -> np.ndarray:
    return np.array([f.matches(r) for r in records(n)])


@pytest.mark.parametrize("percent", [1, 10, 50])
def test_filtered_recall_against_exact_filtered_search(gallery, percent, monkeypatch):
    g, xb, ids, xq = gallery
    f = SearchFilter(cameras=[f"c{c}" for c in range(percent)])
    mask = keep(f, N)
    assert mask.mean() == pytest.approx(percent / 100)
    asked = []
    search = faiss_index.search
    monkeypatch.setattr(faiss_index, "search", lambda *a, **kw: asked.append((a[2], kw.get("sel"))) or search(*a, **kw))
    hits = g.search(xq, 10, f, model_id=MODEL)
    _, truth = brute_force(xb[mask], ids[mask], xq, 10)
    recall = np.mean([len({h.id for h in row} & set(t)) / 10 for row, t in zip(hits, truth, strict=True)])
    assert recall >= (1.0 if g.stats()["index_choice"] is None else 0.95)
    assert all(h.record.camera_id in f.cameras for row in hits for h in row)
    # Inside the index: one search for k (x the re-rank shortlist), with a selector, no over-fetch and widening.
    shortlist = 10 * (g._growth.policy.rerank if g._growth is not None else 1)
    assert asked and all(k == shortlist and sel is not None for k, sel in asked)


def test_person_time_and_excluded_cameras_inside_the_index(gallery):
    g, xb, ids, xq = gallery
    f = SearchFilter(person_ids=["p1", "p2", "p3"], time_from=1_000.0, time_to=15_000.0, exclude_cameras=["c1"])
    mask = keep(f, N)
    hits = g.search(xq[:10], 5, f, model_id=MODEL)
    _, truth = brute_force(xb[mask], ids[mask], xq[:10], 5)
    recall = np.mean([len({h.id for h in row} & set(t)) / 5 for row, t in zip(hits, truth, strict=True)])
    assert recall >= 0.9
    assert all(f.matches(h.record) for row in hits for h in row)


def test_a_filter_that_keeps_nothing_and_items_added_after_the_first_filtered_search(tmp_path):
    x = clustered(300, DIM, seed=3)
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM) as g:
        g.add(x[:200], records(200), model_id=MODEL)
        assert g.search(x[:2], 5, SearchFilter(cameras=["nobody"]), model_id=MODEL) == [[], []]
        assert len(g.search(x[:1], 5, SearchFilter(cameras=["c7"]), model_id=MODEL)[0]) == 2
        new = g.add(x[200:], [Record(camera_id="new")] * 100, model_id=MODEL)  # the columns catch up
        hits = g.search(x[200:201], 5, SearchFilter(cameras=["new"]), model_id=MODEL)[0]
        assert [h.id for h in hits][:1] == new[:1] and all(h.record.camera_id == "new" for h in hits)
        g.remove(new[:1])
        hits = g.search(x[200:201], 5, SearchFilter(cameras=["new"]), model_id=MODEL)[0]
        assert new[0] not in [h.id for h in hits] and len(hits) == 5
