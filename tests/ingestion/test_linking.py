"""The linking job over a gallery (ingestion.linking, ``python -m ingestion.link``): where its threshold comes
from, incremental joins that keep identities, constraints that hold whatever the appearance says, a Milvus Lite
gallery, and the command line's answers (a subprocess, as documented)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import open_gallery
from index.records import Record
from ingestion.cli import link_main
from ingestion.linking import DEFAULT_THRESHOLD, link_gallery

MODEL, DIM = "link-model", 16
ROOT = Path(__file__).resolve().parents[2]


def person_vectors(n_people: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n_people, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_track(g, track: str, camera: str, t0: float, centre: np.ndarray, *, person=None, n=2, seed=0, timed=True):
    x = centre + 0.05 * np.random.default_rng(seed).normal(size=(n, DIM))
    records = [
        Record(person_id=person, camera_id=camera, captured_at=t0 + i if timed else None, track_id=track)
        for i in range(n)
    ]
    return g.add(x, records, model_id=MODEL)


def two_cameras(g, people: np.ndarray, *, named=False) -> None:
    for p, centre in enumerate(people):
        for c, camera in enumerate(("c1", "c2")):
            person = f"p{p}" if named else None
            add_track(g, f"{camera}-{p}", camera, 1000.0 * p + 60 * c, centre, person=person, seed=10 * p + c)


def identities(g) -> dict[str, int | None]:
    return {t.track_id: t.identity_id for t in g.tracks(limit=-1)}


def test_threshold_from_labelled_tracks_then_the_gallery_calibration_then_the_default(tmp_path):
    with open_gallery(tmp_path / "named", model_id=MODEL, dim=DIM) as g:
        two_cameras(g, person_vectors(30), named=True)  # 30 identities: a 10 % false-link rate is measurable
        run = link_gallery(g, far=0.1)
        assert run.threshold_source.startswith("calibrated on the tracks")
        assert run.threshold != DEFAULT_THRESHOLD
    with open_gallery(tmp_path / "stored", model_id=MODEL, dim=DIM) as g:
        two_cameras(g, person_vectors(3))
        point = {"target_far": 0.01, "threshold": 0.42, "dir": 0.9, "far": 0.01, "absent_identities": 400,
                 "absent_probes": 400, "enrolled_probes": 400, "reliable": True}  # fmt: skip
        g.set_calibration({"source": "gallery", "method": "leave-one-identity-out", "top_k": 10,
                           "gallery_identities": 400, "gallery_crops": 800, "operating_points": [point]})  # fmt: skip
        run = link_gallery(g, far=0.01)
        assert (run.threshold, run.threshold_source.startswith("the gallery's")) == (0.42, True)
    with open_gallery(tmp_path / "bare", model_id=MODEL, dim=DIM) as g:
        two_cameras(g, person_vectors(3))
        run = link_gallery(g)
        assert (run.threshold, run.threshold_source.startswith("the default")) == (DEFAULT_THRESHOLD, True)


def test_incremental_join_keeps_identities_and_constraints_hold(tmp_path):
    people = person_vectors(3, seed=1)
    with open_gallery(tmp_path / "g", model_id=MODEL, dim=DIM) as g:
        two_cameras(g, people)
        first = link_gallery(g)
        before = identities(g)
        assert first.assigned == 6 and len(set(before.values())) == 3
        add_track(g, "c3-0", "c3", 5000.0, people[0], seed=99)  # person 0 again, on c3
        run = link_gallery(g)
        after = identities(g)
        assert run.mode == "incremental" and run.assigned == 1
        assert {k: after[k] for k in before} == before  # old tracks keep their identities
        assert after["c3-0"] == before["c1-0"]
        # a look-alike of person 0 on c1 while person 0's c1 track runs: another person, whatever it looks like
        add_track(g, "twin", "c1", 0.5, people[0], seed=98)
        link_gallery(g)
        after = identities(g)
        assert after["twin"] != before["c1-0"] and after["twin"] not in before.values()
        full = link_gallery(g, full=True)
        assert full.changes is not None and identities(g)["twin"] != identities(g)["c1-0"]


def test_milvus_lite_gallery_links_the_same_way(tmp_path):
    pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra")
    people = person_vectors(3, seed=2)
    with open_gallery(tmp_path / "g.db", model_id=MODEL, dim=DIM, collection="tracks") as g:
        two_cameras(g, people)
        link_gallery(g)
        got = identities(g)
        assert all(got[f"c1-{p}"] == got[f"c2-{p}"] for p in range(3)) and len(set(got.values())) == 3
        gone = g.track_items("c2-1")
        g.remove(gone)
        link_gallery(g, full=True)
        assert "c2-1" not in identities(g)
        assert [t.track_id for t in g.identity_tracks(got["c1-1"])] == ["c1-1"]


def test_command_line(tmp_path):
    path = tmp_path / "g"
    with open_gallery(path, model_id=MODEL, dim=DIM) as g:
        two_cameras(g, person_vectors(2, seed=3))
        add_track(g, "untimed", "c1", 0.0, person_vectors(1, seed=4)[0], timed=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ingestion.link", "--gallery", str(path), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert (run["tracks"], run["untimed"], run["assigned"], run["identities"]) == (5, 1, 4, 2)
    with open_gallery(path) as g:  # the server holds the gallery's lock: the command says so
        assert link_main(["--gallery", str(path)]) == 2
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"pairs": [{"cameras": ["c1", "c2"], "min_transit_s": 120}]}))
    assert link_main(["--gallery", str(path), "--full", "--topology", str(topology)]) == 0
    with open_gallery(path, readonly=True) as g:
        got = identities(g)
    assert got["c1-0"] != got["c2-0"]  # 60 s apart, faster than the 120 s the topology allows
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert link_main(["--gallery", str(path), "--topology", str(bad)]) == 2
