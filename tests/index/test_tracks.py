"""Tracks and identities, one contract for both backends (the embedded store and Milvus Lite, through
index.open_gallery): tracks follow their items through adds and removals, identities are reserved from the gallery
and never reused, an erased track takes its identity with it. Plus the embedded store's catch-up after a crash."""

import itertools
import sqlite3

import numpy as np
import pytest

from index import open_gallery
from index.records import Record
from index.track_records import TrackQuery
from ingestion.track_features import track_feature

pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")

MODEL, DIM = "tracks-model", 8
_names = itertools.count()


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory):
    return tmp_path_factory.mktemp("lite") / "tracks.db"


@pytest.fixture(params=["embedded", "milvus-lite"])
def uri(request, tmp_path, lite_file):
    if request.param == "embedded":
        return str(tmp_path / "gallery"), None
    return str(lite_file), f"tr{next(_names)}"


def make(uri):
    return open_gallery(uri[0], model_id=MODEL, dim=DIM, collection=uri[1])


def reopen(uri):
    return open_gallery(uri[0], collection=uri[1])


def walk(track, camera, t0, n, quality=None):
    return [
        Record(camera_id=camera, captured_at=t0 + i, track_id=track, metadata={} if quality is None else {"quality": q})
        for i, q in enumerate(quality or [None] * n)
    ]


def unit(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_gallery_without_tracks_answers_empty(uri):
    with make(uri) as g:
        g.add(unit(3, 0), [Record(person_id="p")] * 3, model_id=MODEL)
        assert g.tracks() == [] and g.identities() == [] and g.tracks_of(["x"]) == {}
        assert g.track_items("x") == [] and g.identity_tracks(1) == []
        tracks, xb = g.track_vectors()
        assert tracks == [] and xb.shape == (0, DIM)


def test_tracks_follow_adds_with_quality_weighted_features(uri):
    xa, xb_ = unit(3, 1), unit(2, 2)
    with make(uri) as g:
        ids = g.add(xa, walk("a", "c1", 100.0, 3, quality=[0.2, 0.9, 0.5]), model_id=MODEL)
        g.add(unit(1, 3), [Record(person_id="no track")], model_id=MODEL)
        more = g.add(xb_, walk("b", "c2", 50.0, 2), model_id=MODEL)
        tracks = g.tracks()
        assert [t.track_id for t in tracks] == ["a", "b"]  # the order they were first stored in
        a, b = tracks
        assert (a.camera_id, a.first_seen, a.last_seen, a.n_items, a.best_item_id) == ("c1", 100.0, 102.0, 3, ids[1])
        assert (b.n_items, b.best_item_id, b.identity_id) == (2, more[0], None)  # equal qualities: the first
        assert g.track_items("a") == ids
        got, vectors = g.track_vectors()
        want = np.stack([track_feature(xa, [0.2, 0.9, 0.5]), track_feature(xb_)])
        np.testing.assert_allclose(vectors, want, atol=1e-5)
        # a later crop joins its track
        g.add(unit(1, 4), walk("a", "c1", 110.0, 1, quality=[1.0]), model_id=MODEL)
        a = g.tracks_of(["a"])["a"]
        assert (a.n_items, a.last_seen) == (4, 110.0)


def test_paging_and_filters(uri):
    with make(uri) as g:
        for k in range(5):
            g.add(unit(2, 10 + k), walk(f"t{k}", f"c{k % 2}", 100.0 * k, 2), model_id=MODEL)
        first = g.tracks(limit=2)
        rest = g.tracks(after=first[-1].seq, limit=10)
        assert [t.track_id for t in first + rest] == [f"t{k}" for k in range(5)]
        assert [t.track_id for t in g.tracks(TrackQuery(camera_id="c1"))] == ["t1", "t3"]
        # a track is in a window its span overlaps: t2 spans [200, 201]
        assert [t.track_id for t in g.tracks(TrackQuery(time_from=201.0, time_to=299.0))] == ["t2"]
        assert g.tracks(TrackQuery(time_from=202.0, time_to=299.0)) == []


def test_identities_reserved_never_reused_and_timelines(uri):
    with make(uri) as g:
        g.add(unit(2, 20), walk("late", "c2", 500.0, 2), model_id=MODEL)
        g.add(unit(2, 21), walk("early", "c1", 100.0, 2), model_id=MODEL)
        g.add(unit(1, 22), walk("other", "c1", 300.0, 1), model_id=MODEL)
        with pytest.raises(ValueError):
            g.set_identities({"late": 1})  # not reserved
        one, two = g.reserve_identities(2)
        assert g.set_identities({"late": one, "early": one, "other": two, "erased long ago": one}) == 3
        assert [t.track_id for t in g.identity_tracks(one)] == ["early", "late"]  # time order
        summaries = g.identities()
        assert [(s.identity_id, s.n_tracks, s.cameras) for s in summaries] == [
            (one, 2, ("c1", "c2")),
            (two, 1, ("c1",)),
        ]
        assert [s.identity_id for s in g.identities(TrackQuery(camera_id="c2"))] == [one]
        assert [s.identity_id for s in g.identities(after=one)] == [two]
    with reopen(uri) as g:
        assert g.tracks_of(["late"])["late"].identity_id == one
        assert g.reserve_identities(1)[0] > two


def test_removing_items_updates_their_track_and_the_last_takes_its_identity(uri):
    with make(uri) as g:
        ids = g.add(unit(3, 30), walk("a", "c1", 100.0, 3, quality=[0.1, 0.9, 0.2]), model_id=MODEL)
        (ident,) = g.reserve_identities(1)
        g.set_identities({"a": ident})
        g.remove([ids[1]])
        a = g.tracks_of(["a"])["a"]
        assert (a.n_items, a.best_item_id, a.identity_id) == (2, ids[2], ident)
        _, xb = g.track_vectors()
        x = unit(3, 30)
        np.testing.assert_allclose(xb[0], track_feature(x[[0, 2]], [0.1, 0.2]), atol=1e-5)
        g.remove([ids[0], ids[2]])
        assert g.tracks() == [] and g.identity_tracks(ident) == [] and g.identities() == []
        # the same track id used again later starts a new track, without the erased one's identity
        g.add(unit(1, 31), walk("a", "c1", 900.0, 1), model_id=MODEL)
        a = g.tracks_of(["a"])["a"]
        assert (a.n_items, a.first_seen, a.identity_id) == (1, 900.0, None)


def test_embedded_tables_behind_the_log_are_caught_up_on_open(tmp_path):
    path = tmp_path / "gallery"
    with open_gallery(path, model_id=MODEL, dim=DIM) as g:
        ids = g.add(unit(2, 40), walk("a", "c1", 1.0, 2), model_id=MODEL)
        g.add(unit(1, 41), walk("b", "c1", 5.0, 1), model_id=MODEL)
    # as if the process died after the log committed the last add and a removal, before the tables caught up
    with sqlite3.connect(path / "gallery.sqlite") as conn:
        conn.execute("DELETE FROM tracks WHERE track_id = 'b'")
        conn.execute("DELETE FROM track_items WHERE track_id = 'b'")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'tracks.last_id'", (str(ids[-1]),))
        conn.execute("DELETE FROM items WHERE id = ?", (ids[0],))
        conn.execute("INSERT INTO removals (id, vector_crc) VALUES (?, NULL)", (ids[0],))
    with open_gallery(path) as g:
        assert {t.track_id: t.n_items for t in g.tracks()} == {"a": 1, "b": 1}
