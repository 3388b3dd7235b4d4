"""reid gallery copy: any backend to any backend, ids and records kept, resumable, verified."""

import subprocess
import sys

import pytest

from client.cli import main as reid
from index import copy as gallery_copy
from index import open_gallery
from index.errors import GalleryError, ModelMismatch
from index.records import Record
from tests.index.vectors import clustered

pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")

MODEL = "copy-model"
DIM = 16


def filled(uri, n=120, seed=0):
    xb = clustered(n, DIM, seed=seed)
    records = [
        Record(
            person_id=f"p{i % 9}",
            camera_id=f"c{i % 3}",
            captured_at=float(i),
            metadata={"i": i},
            content_hash=f"{i:064x}",
        )
        for i in range(n)
    ]
    with open_gallery(uri, model_id=MODEL, dim=DIM) as g:
        ids = g.add(xb, records, model_id=MODEL)
        g.remove(ids[10:20])  # gaps in the ids: they must stay gaps
    return xb, ids


def test_copy_to_milvus_lite_and_back_keeps_ids_records_and_searches(tmp_path):
    xb, ids = filled(str(tmp_path / "folder"))
    report = gallery_copy.copy_gallery(str(tmp_path / "folder"), str(tmp_path / "copy.db"), batch=25)
    assert report.ok and (report.copied, report.skipped) == (110, 0) and report.searches_checked == 20
    back = gallery_copy.copy_gallery(str(tmp_path / "copy.db"), str(tmp_path / "back"), batch=40)
    assert back.ok and back.copied == 110
    with open_gallery(str(tmp_path / "folder")) as a, open_gallery(str(tmp_path / "back")) as b:
        assert a.scan(0, 500)[0].tolist() == b.scan(0, 500)[0].tolist() == ids[:10] + ids[20:]
        ra, rb = a.get(ids[50]), b.get(ids[50])
        assert (ra.person_id, ra.camera_id, ra.captured_at, ra.metadata, ra.added_at) == (
            rb.person_id,
            rb.camera_id,
            rb.captured_at,
            rb.metadata,
            rb.added_at,
        )
        [new] = b.add(xb[:1], [Record()], model_id=MODEL)
        assert new > max(ids)  # the copy continues the source's id sequence


def test_an_interrupted_copy_resumes_without_copying_twice(tmp_path, monkeypatch):
    filled(str(tmp_path / "folder"))
    calls = {"n": 0}

    def dying_import(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the copy
        return real_import(self, *args, **kwargs)

    from index.milvus import MilvusGallery

    real_import = MilvusGallery.import_items
    monkeypatch.setattr(MilvusGallery, "import_items", dying_import)
    with pytest.raises(KeyboardInterrupt):
        gallery_copy.copy_gallery(str(tmp_path / "folder"), str(tmp_path / "copy.db"), batch=30)
    monkeypatch.setattr(MilvusGallery, "import_items", real_import)
    report = gallery_copy.copy_gallery(str(tmp_path / "folder"), str(tmp_path / "copy.db"), batch=30)
    assert report.ok and report.skipped == 60 and report.copied == 50 and report.destination_count == 110


def test_copy_refuses_another_model_and_never_reuses_a_removed_id(tmp_path):
    filled(str(tmp_path / "folder"))
    with open_gallery(str(tmp_path / "other"), model_id="another", dim=DIM):
        pass
    with pytest.raises(ModelMismatch):
        gallery_copy.copy_gallery(str(tmp_path / "folder"), str(tmp_path / "other"))
    assert gallery_copy.copy_gallery(str(tmp_path / "folder"), str(tmp_path / "dst")).ok
    with open_gallery(str(tmp_path / "dst")) as dst:  # someone removes an item from the copy
        dst.remove(dst.scan(0, 1)[0].tolist())
    with pytest.raises(GalleryError, match="already assigned"):
        gallery_copy.copy_gallery(str(tmp_path / "folder"), str(tmp_path / "dst"))


def test_reid_gallery_copy_runs_the_copy_and_exits_0(tmp_path, capfd):
    xb, ids = filled(str(tmp_path / "folder"))
    assert reid(["gallery", "copy", str(tmp_path / "folder"), str(tmp_path / "cli.db"), "--sample", "5"]) == 0
    err = capfd.readouterr().err
    assert "copied 110" in err and "110 -> 110" in err and "5 searches compared" in err
    assert "%|" not in err  # no progress bar (tqdm's "copy:  50%|###") when stderr is not a terminal
    again = subprocess.run(
        [sys.executable, "-m", "index.copy", str(tmp_path / "folder"), str(tmp_path / "cli.db")],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "copied 0, already there 110" in again.stderr
    with open_gallery(str(tmp_path / "cli.db")) as g:
        assert len(g) == 110 and g.search(xb[0], 1, model_id=MODEL)[0][0].id == ids[0]
