"""Durability: kill -9 during adds, corrupt snapshots and manifests, a corrupt log, the writer lock."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index.gallery import CorruptGallery, Gallery, GalleryLocked, Record
from tests.index.vectors import clustered

MODEL = "durable"
DIM = 16
ROOT = Path(__file__).resolve().parents[2]


def seeded_vector(seed: int) -> np.ndarray:
    return clustered(1, DIM, clusters=1000, seed=seed)[0]


ADDER = textwrap.dedent(
    """
    import sys
    from tests.index.test_durability import MODEL, seeded_vector
    from index.gallery import Gallery, Record

    g = Gallery.open(sys.argv[1], snapshot_every=7)  # frequent snapshots: kills land inside them too
    seed = int(sys.argv[2])
    while True:
        [gid] = g.add(seeded_vector(seed), [Record(person_id=str(seed))], model_id=MODEL)
        print(gid, seed, flush=True)  # printed = acknowledged
        seed += 1
    """
)


@pytest.mark.slow
def test_every_acknowledged_add_survives_kill_9(tmp_path):
    path = tmp_path / "g"
    Gallery.create(path, model_id=MODEL, dim=DIM).close()
    acked: dict[int, int] = {}
    rng = random.Random(0)
    seed = 0
    for kills in range(1, 11):
        proc = subprocess.Popen(
            [sys.executable, "-c", ADDER, str(path), str(seed)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        first = proc.stdout.readline()  # wait until it is adding, then let it run a little
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        out = first + proc.stdout.read()
        proc.wait()
        lines = out.split("\n")[:-1]  # a line without its newline was cut by the kill: not acknowledged
        assert lines, "the adder never acknowledged an add"
        for line in lines:
            gid, s = map(int, line.split())
            acked[gid] = s
        seed = max(acked.values()) + 2  # the add in flight at the kill may or may not have committed

        with Gallery.open(path) as g:
            stats = g.stats()
            assert stats["count"] == stats["ntotal"] == len(g)
            assert len(acked) <= len(g) <= len(acked) + kills  # at most the one add in flight per kill
            for gid, s in acked.items():
                assert g.get(gid).person_id == str(s)
            top = g.search(np.stack([seeded_vector(s) for s in acked.values()]), 1, model_id=MODEL)
            assert [row[0].id for row in top] == list(acked)
            assert all(row[0].score == pytest.approx(1.0, abs=1e-5) for row in top)


@pytest.fixture
def saved(tmp_path):
    """A closed gallery of 200 vectors and the ids a few queries find in it."""
    path = tmp_path / "g"
    xb = clustered(200, DIM, seed=1)
    with Gallery.create(path, model_id=MODEL, dim=DIM) as g:
        g.add(xb, [Record(person_id=str(i)) for i in range(200)], model_id=MODEL)
        g.remove([5, 6, 7])
        expected = [[h.id for h in row] for row in g.search(xb[:5], 10, model_id=MODEL)]
    return path, xb, expected


def snapshot_file(path: Path) -> Path:
    [f] = path.glob("index.*.faiss")
    return f


def flip_byte(f: Path, at: int) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0x40
    f.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated to 0": lambda p: snapshot_file(p).write_bytes(b""),
    "truncated to half": lambda p: snapshot_file(p).write_bytes(snapshot_file(p).read_bytes()[:3000]),
    "one byte short": lambda p: snapshot_file(p).write_bytes(snapshot_file(p).read_bytes()[:-1]),
    "header byte flipped": lambda p: flip_byte(snapshot_file(p), 2),
    "payload byte flipped": lambda p: flip_byte(snapshot_file(p), 9000),
    "snapshot deleted": lambda p: snapshot_file(p).unlink(),
    "manifest garbage": lambda p: (p / "manifest.json").write_bytes(b"{not json"),
    "manifest watermark edited": lambda p: (p / "manifest.json").write_text(
        (p / "manifest.json").read_text().replace('"last_id": 200', '"last_id": 150')
    ),
    "manifest deleted": lambda p: (p / "manifest.json").unlink(),
}


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_snapshot_is_detected_and_rebuilt_from_the_log(saved, corruption, readonly):
    path, xb, expected = saved
    CORRUPTIONS[corruption](path)
    with Gallery.open(path, readonly=readonly) as g:
        assert g.stats()["recovered"], "the corruption went unnoticed"
        assert len(g) == 197 and g.stats()["ntotal"] == 197
        assert [[h.id for h in row] for row in g.search(xb[:5], 10, model_id=MODEL)] == expected
    if not readonly:  # the rebuilt snapshot is written back: the next open is clean
        with Gallery.open(path) as g:
            assert g.stats()["recovered"] == []


def test_snapshot_is_caught_up_from_the_log(saved):
    path, xb, _ = saved
    manifest = (path / "manifest.json").read_bytes()
    snap = snapshot_file(path)
    old = snap.read_bytes()
    with Gallery.open(path) as g:
        g.add(clustered(3, DIM, seed=2), [Record()] * 3, model_id=MODEL)
        g.remove([1, 2])
    for f in path.glob("index.*.faiss"):  # roll the snapshot back to before those writes
        f.unlink()
    snap.write_bytes(old)
    (path / "manifest.json").write_bytes(manifest)
    with Gallery.open(path, readonly=True) as g:
        assert g.stats()["recovered"] == []
        assert len(g) == g.stats()["ntotal"] == 198
        assert g.get(1) is None and all(h.id not in (1, 2) for h in g.search(xb[:3], 20, model_id=MODEL)[0])


@pytest.mark.parametrize("damage", ["header", "truncated", "garbage"])
def test_corrupt_log_is_refused(saved, damage):
    path, _, _ = saved
    db = path / "gallery.sqlite"
    data = db.read_bytes()
    if damage == "header":
        db.write_bytes(b"\0" * 100 + data[100:])
    elif damage == "truncated":
        db.write_bytes(data[: len(data) // 3])
    else:
        db.write_bytes(os.urandom(len(data)))
    with pytest.raises(CorruptGallery):
        Gallery.open(path)


def test_flipped_vector_byte_in_the_log_is_refused_when_read(saved):
    path, xb, _ = saved
    db = path / "gallery.sqlite"
    data = bytearray(db.read_bytes())
    at = bytes(data).find(xb[100].tobytes())  # the stored blob of id 101, byte for byte
    assert at > 0
    data[at + 17] ^= 0x01
    db.write_bytes(bytes(data))
    snapshot_file(path).unlink()  # force a rebuild, which reads every vector
    with pytest.raises(CorruptGallery, match="id 101"):
        Gallery.open(path)


def test_writer_lock_across_processes(saved):
    path, _, _ = saved
    code = "import sys; from index.gallery import Gallery; Gallery.open(sys.argv[1]).close()"
    with Gallery.open(path):
        out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode != 0 and "GalleryLocked" in out.stderr
        with Gallery.open(path, readonly=True) as reader:  # readers are not locked out
            assert len(reader) == 197
    with pytest.raises(GalleryLocked), Gallery.open(path), Gallery.open(path):
        pass


def test_ivf_recovery_reuses_the_saved_training(tmp_path, monkeypatch):
    import faiss

    path = tmp_path / "g"
    xb = clustered(400, DIM, seed=3)
    with Gallery.create(path, model_id=MODEL, dim=DIM, factory="IVF4,Flat") as g:
        g.add(xb, [Record()] * 400, model_id=MODEL)
        assert g.stats()["trained"]
        expected = [[h.id for h in row] for row in g.search(xb[:5], 10, model_id=MODEL)]
    snapshot_file(path).unlink()

    def no_training(self, x):
        raise AssertionError("the rebuild trained again")

    with monkeypatch.context() as m:
        m.setattr(faiss.IndexIVFFlat, "train", no_training)
        with Gallery.open(path) as g:  # rebuilt from the log on the saved training
            assert g.stats()["recovered"] and g.stats()["trained"] and len(g) == 400
            assert [[h.id for h in row] for row in g.search(xb[:5], 10, model_id=MODEL)] == expected

    flip_byte(path / "trained.faiss", 100)  # a corrupt training is not trusted: trained again
    snapshot_file(path).unlink()
    with Gallery.open(path) as g:
        assert any("trained.faiss unusable" in r for r in g.stats()["recovered"])
        assert g.stats()["trained"] and len(g) == 400
