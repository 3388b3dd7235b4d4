"""Gallery behaviour on small data: exact search, filters, aggregation, refusals, ids, concurrency."""

import threading

import numpy as np
import pytest

from index.gallery import (
    Gallery,
    GalleryError,
    GalleryLocked,
    InvalidVector,
    ModelMismatch,
    Record,
    SearchFilter,
    aggregate_identities,
)
from tests.index.vectors import brute_force, clustered

MODEL = "test-model"
DIM = 32


def records(n, start=0):
    return [
        Record(person_id=f"p{(start + i) % 7}", camera_id=str((start + i) % 3), captured_at=float(start + i))
        for i in range(n)
    ]


@pytest.fixture
def gallery(tmp_path):
    g = Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM)
    yield g
    g.close()


def test_search_equals_brute_force(gallery):
    xb = clustered(300, DIM, clusters=20, seed=1)
    ids = np.array(gallery.add(xb, records(300), model_id=MODEL))
    xq = clustered(5, DIM, clusters=20, seed=2)
    d_ref, i_ref = brute_force(xb, ids, xq, 10)
    hits = gallery.search(xq, 10, model_id=MODEL)
    assert [[h.id for h in row] for row in hits] == i_ref.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], d_ref, atol=1e-5)
    assert hits[0][0].record.person_id == f"p{int(i_ref[0, 0] - ids[0]) % 7}"


def test_vectors_are_normalised_before_inner_product(gallery):
    x = clustered(2, DIM, seed=3)
    gallery.add(x * np.array([[5.0], [0.1]], dtype=np.float32), records(2), model_id=MODEL)
    hits = gallery.search(x[0] * 3.0, 2, model_id=MODEL)[0]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score == pytest.approx(float(x[0] @ x[1]), abs=1e-5)


def test_k_larger_than_gallery_never_returns_padding(gallery):
    ids = gallery.add(clustered(3, DIM, seed=4), records(3), model_id=MODEL)
    hits = gallery.search(clustered(1, DIM, seed=5), 10, model_id=MODEL)[0]
    assert sorted(h.id for h in hits) == sorted(ids)
    assert all(h.id >= 0 and h.record.id == h.id for h in hits)


def test_empty_gallery_returns_no_hits(gallery):
    assert gallery.search(clustered(2, DIM, seed=6), 5, model_id=MODEL) == [[], []]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_query_is_refused(gallery, bad):
    gallery.add(clustered(3, DIM, seed=7), records(3), model_id=MODEL)
    q = clustered(1, DIM, seed=8)
    q[0, 3] = bad
    with pytest.raises(InvalidVector, match="NaN or inf"):
        gallery.search(q, 3, model_id=MODEL)
    with pytest.raises(InvalidVector):
        gallery.add(q, records(1), model_id=MODEL)
    with pytest.raises(InvalidVector, match="zero"):
        gallery.search(np.zeros(DIM), 3, model_id=MODEL)


def test_wrong_dim_and_model_are_refused(gallery):
    x = clustered(2, DIM, seed=9)
    with pytest.raises(ModelMismatch, match="dimensions"):
        gallery.search(x[:, :16], 3, model_id=MODEL)
    with pytest.raises(ModelMismatch, match="other-model"):
        gallery.search(x, 3, model_id="other-model")
    with pytest.raises(ModelMismatch):
        gallery.add(x, records(2), model_id="other-model")
    assert len(gallery) == 0


def test_open_or_create_refuses_another_model(tmp_path):
    Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM).close()
    with pytest.raises(ModelMismatch):
        Gallery.open_or_create(tmp_path / "g", model_id="v2", dim=DIM)
    with pytest.raises(ModelMismatch):
        Gallery.open_or_create(tmp_path / "g", model_id=MODEL, dim=64)
    with Gallery.open_or_create(tmp_path / "g", model_id=MODEL, dim=DIM) as g:
        assert (g.model_id, g.dim, g.factory) == (MODEL, DIM, "Flat")
    with pytest.raises(GalleryError, match="already exists"):
        Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM)


def test_records_round_trip_and_ids_are_never_reused(gallery):
    rec = Record("0002", "c1", 1700000000.5, "t7", "a/b.jpg", "ab" * 32, {"frame": 451})
    [first] = gallery.add(clustered(1, DIM, seed=10), [rec], model_id=MODEL)
    got = gallery.get(first)
    assert (got.person_id, got.camera_id, got.captured_at, got.track_id, got.source) == (
        "0002",
        "c1",
        1700000000.5,
        "t7",
        "a/b.jpg",
    )
    assert got.metadata == {"frame": 451} and got.id == first and got.added_at > 0
    assert gallery.find_hash("ab" * 32) == first
    assert gallery.remove([first, 12345, -1]) == 1
    assert gallery.get(first) is None and gallery.get(-1) is None and gallery.find_hash("ab" * 32) is None
    [second] = gallery.add(clustered(1, DIM, seed=11), records(1), model_id=MODEL)
    assert second > first
    gallery.close()
    with Gallery.open(gallery.path) as g:
        [third] = g.add(clustered(1, DIM, seed=12), records(1), model_id=MODEL)
        assert third > second


def test_filters(gallery):
    xb = clustered(210, DIM, clusters=5, seed=13)
    gallery.add(xb, records(210), model_id=MODEL)
    q = xb[:1]
    cases = [
        SearchFilter(cameras=["1"]),
        SearchFilter(exclude_cameras=["0", "2"]),
        SearchFilter(person_ids=["p3", "p5"]),
        SearchFilter(time_from=50.0, time_to=60.0),
        SearchFilter(cameras=["2"], person_ids=["p4"], time_from=100.0),
    ]
    for f in cases:
        hits = gallery.search(q, 5, f, model_id=MODEL)[0]
        assert len(hits) == 5, f
        assert all(f.matches(h.record) for h in hits)
        # the same hits as filtering an exhaustive search: widening finds the true top-5 that pass
        everything = gallery.search(q, 210, model_id=MODEL)[0]
        assert [h.id for h in hits] == [h.id for h in everything if f.matches(h.record)][:5]
    rare = SearchFilter(person_ids=["p1"], time_from=0.0, time_to=20.0)  # 3 records only
    assert len(gallery.search(q, 10, rare, model_id=MODEL)[0]) == 3
    assert gallery.search(q, 10, SearchFilter(cameras=["nope"]), model_id=MODEL) == [[]]


def test_aggregate_identities_ranks_people_by_best_hit(gallery):
    xb = clustered(50, DIM, clusters=3, seed=14)
    gallery.add(xb, records(50), model_id=MODEL)
    hits = gallery.search(xb[:1], 20, model_id=MODEL)[0]
    identities = aggregate_identities(hits)
    assert sum(i.count for i in identities) == len(hits)
    assert [i.score for i in identities] == sorted((i.score for i in identities), reverse=True)
    for ident in identities:
        mine = [h for h in hits if h.record.person_id == ident.person_id]
        assert ident.count == len(mine) and ident.best_id == max(mine, key=lambda h: h.score).id
        assert ident.score == max(h.score for h in mine)
    assert identities[0].best_id == hits[0].id


def test_ivf_serves_exactly_until_trained(tmp_path):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory="IVF4,Flat") as g:
        need = g.stats()["min_train_size"]
        xb = clustered(need + 10, DIM, seed=15)
        g.add(xb[: need - 1], records(need - 1), model_id=MODEL)
        assert not g.stats()["trained"]
        assert g.search(xb[5], 1, model_id=MODEL)[0][0].score == pytest.approx(1.0, abs=1e-5)
        g.add(xb[need - 1 :], records(11), model_id=MODEL)
        assert g.stats()["trained"] and g.stats()["index_type"] == "IndexIVFFlat" and len(g) == need + 10
    with Gallery.open(tmp_path / "g") as g:
        assert g.stats()["trained"] and g.stats()["recovered"] == []


def test_hnsw_honours_removals(tmp_path):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory="HNSW16") as g:
        xb = clustered(100, DIM, seed=16)
        ids = g.add(xb, records(100), model_id=MODEL)
        assert g.remove(ids[:50]) == 50
        hits = g.search(xb[:10], 10, model_id=MODEL)
        assert all(h.id in ids[50:] for row in hits for h in row)
        assert all(len(row) == 10 for row in hits)
        assert g.stats()["tombstones"] == 50
    with Gallery.open(tmp_path / "g") as g:  # the snapshot was rebuilt without the removed vectors
        assert g.stats()["ntotal"] == 50 and g.stats()["tombstones"] == 0


def test_unsupported_factory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory="LSH")
    with pytest.raises(ValueError, match="does not divide"):
        Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM, factory="IVF4,PQ5")


def test_readonly_gallery_refuses_writes_and_sees_later_rows_on_refresh(tmp_path):
    with Gallery.create(tmp_path / "g", model_id=MODEL, dim=DIM) as writer:
        writer.add(clustered(5, DIM, seed=17), records(5), model_id=MODEL)
        with Gallery.open(tmp_path / "g", readonly=True) as reader:
            assert len(reader) == 5
            with pytest.raises(GalleryError, match="read-only"):
                reader.add(clustered(1, DIM, seed=18), records(1), model_id=MODEL)
            writer.add(clustered(3, DIM, seed=19), records(3), model_id=MODEL)
            assert reader.refresh() == 3 and len(reader) == 8


def test_second_writer_is_locked_out(gallery):
    with pytest.raises(GalleryLocked):
        Gallery.open(gallery.path)
    gallery.close()
    Gallery.open(gallery.path).close()  # the lock goes with the writer


def test_searches_beside_a_writer_thread(gallery):
    xb = clustered(2000, DIM, seed=20)
    gallery.add(xb[:100], records(100), model_id=MODEL)
    errors = []

    def write():
        try:
            for start in range(100, 2000, 50):
                ids = gallery.add(xb[start : start + 50], records(50, start), model_id=MODEL)
                gallery.remove(ids[:5])
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        for row in gallery.search(xb[:4], 10, model_id=MODEL):
            assert all(h.id > 0 and h.record.id == h.id for h in row)
    writer.join()
    assert errors == []
    stats = gallery.stats()
    assert len(gallery) == 2000 - 38 * 5 and stats["ntotal"] - stats["tombstones"] == len(gallery)
    gallery.snapshot()  # compacts: the removed vectors leave the index
    assert gallery.stats()["ntotal"] == len(gallery) and gallery.stats()["tombstones"] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_gpu_search_matches_cpu_and_honours_removals(tmp_path, factory):
    from index.faiss_index import gpu_available

    if not gpu_available():
        pytest.skip("faiss here is built without CUDA (faiss-cpu); install faiss-gpu to run this")
    xb = clustered(400, DIM, seed=21)
    with (
        Gallery.create(tmp_path / "cpu", model_id=MODEL, dim=DIM, factory=factory, nprobe=4) as cpu,
        Gallery.create(tmp_path / "gpu", model_id=MODEL, dim=DIM, factory=factory, nprobe=4, gpu=True) as gpu,
    ):
        for g in (cpu, gpu):
            ids = g.add(xb, records(400), model_id=MODEL)
            g.remove(ids[:10])
        assert gpu.stats()["gpu"] and not cpu.stats()["gpu"]
        want = [[h.id for h in row] for row in cpu.search(xb[:20], 10, model_id=MODEL)]
        assert [[h.id for h in row] for row in gpu.search(xb[:20], 10, model_id=MODEL)] == want
        assert all(i not in ids[:10] for row in want for i in row)


def hashed(n, tag="h"):
    return [Record(person_id=f"p{i}", camera_id="1", content_hash=f"{tag}{i:062d}") for i in range(n)]


def test_add_new_adds_each_content_hash_once(gallery):
    xb = clustered(4, DIM, seed=30)
    first = gallery.add_new(xb[:2], hashed(2), model_id=MODEL)
    assert [added for _, added in first] == [True, True]
    # A batch repeating a stored hash and repeating one of its own: only the genuinely new one is added.
    batch = [hashed(2)[1], hashed(3)[2], hashed(3)[2]]
    second = gallery.add_new(xb[1:4], batch, model_id=MODEL)
    assert [added for _, added in second] == [False, True, False]
    assert second[0][0] == first[1][0] and second[1][0] == second[2][0]
    assert len(gallery) == 3
    assert gallery.find_hashes([r.content_hash for r in hashed(4)]) == {
        hashed(3)[i].content_hash: gid for i, gid in enumerate([first[0][0], first[1][0], second[1][0]])
    }


def test_concurrent_add_new_of_the_same_bytes_adds_them_once(gallery):
    xb = clustered(8, DIM, seed=31)
    results = []
    barrier = threading.Barrier(4)

    def add():
        barrier.wait()
        results.append(gallery.add_new(xb, hashed(8, "c"), model_id=MODEL))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(gallery) == 8
    assert sum(added for result in results for _, added in result) == 8
    assert len({tuple(gid for gid, _ in result) for result in results}) == 1  # everyone got the same ids
