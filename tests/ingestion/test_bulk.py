"""Bulk indexing of a folder with bad files, twice; a CSV manifest through the command line."""

import asyncio
import hashlib
import json
import os
from pathlib import Path, PurePosixPath

import cv2
import httpx
import numpy as np
import pytest

from client.cli import main as cli_main
from embedders.base import create_embedder
from index.crops import CropStore
from index.gallery import Gallery
from ingestion.bulk import index_folder, labels_from_path
from ingestion.cli import bulk_main as main
from tests.support import LiveServer, gallery_settings


def crop(seed: int, height: int = 128, width: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", pixels)
    assert ok
    return data.tobytes()


GOOD = [  # the decodable files of the crops fixture, one per distinct content
    "0001_c1s1_000010_00.jpg",
    "0001_c2s1_000020_00.jpg",
    "0002_c1s1_000030_00.jpg",
    "0002_c3s1_000040_00.jpg",
    "0007_c2_f0001234.jpg",
    "person9/anything_c4.jpg",
]


@pytest.fixture(autouse=True)
def _no_crop_settings(monkeypatch):
    """--keep-crops defaults to the API's crop settings; these tests give theirs explicitly."""
    monkeypatch.delenv("REID_CROPS_DIR", raising=False)
    monkeypatch.delenv("REID_CROPS_MAX_BYTES", raising=False)


@pytest.fixture
def crops(tmp_path):
    """A Market-1501-style folder: 6 good crops, one duplicate, and one of each kind of bad file."""
    root = tmp_path / "crops"
    root.mkdir()
    names = [f"{p:04d}_c{c}s1_{f:06d}_00.jpg" for p, c, f in [(1, 1, 10), (1, 2, 20), (2, 1, 30), (2, 3, 40)]]
    names += ["0007_c2_f0001234.jpg", "person9/anything_c4.jpg"]  # a Duke name; folder-per-person
    for i, name in enumerate(names):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(crop(i))
    (root / "0001_c1s1_000099_00.jpg").write_bytes(crop(0))  # same bytes as the first: a duplicate
    (root / "0003_c1s1_000001_00.jpg").write_text("not an image at all")
    (root / "0003_c1s1_000002_00.jpg").write_bytes(crop(7)[:400])  # truncated JPEG
    (root / "0003_c1s1_000003_00.jpg").write_bytes(crop(8, 8, 8))  # too small
    canary = tmp_path / "outside.jpg"  # a valid crop outside the folder, reachable only by a symlink
    canary.write_bytes(crop(9))
    (root / "0003_c1s1_000004_00.jpg").symlink_to(canary)
    (root / "notes.txt").write_text("a note")
    return root, canary


async def with_embedder(artifact, work):
    """Run work(embedder) on a started ONNX Runtime embedder, in one event loop (its batcher lives there)."""
    embedder = create_embedder("onnx", artifact=artifact, intra_op_threads=1)
    await embedder.start()
    try:
        return await work(embedder)
    finally:
        await embedder.close()


def test_labels_from_names_and_folders():
    market = labels_from_path(PurePosixPath("0002_c1s1_000451_03.jpg"))
    assert (market.person_id, market.camera_id, market.metadata) == (
        "0002",
        "1",
        {"sequence": 1, "frame": 451, "box": 3},
    )
    duke = labels_from_path(PurePosixPath("q/0005_c2_f0046985.jpg"))
    assert (duke.person_id, duke.camera_id, duke.metadata) == ("0005", "2", {"frame": 46985})
    folder = labels_from_path(PurePosixPath("alice/img_c3_1.png"))
    assert (folder.person_id, folder.camera_id) == ("alice", "3")
    assert labels_from_path(PurePosixPath("x.jpg")).person_id is None
    assert labels_from_path(PurePosixPath("bob/0002_c1s1_000451_03.jpg"), "folders").person_id == "bob"


def test_bulk_index_skips_bad_files_and_is_idempotent(tmp_path, crops, tiny_artifact, monkeypatch):
    root, canary = crops
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(os.fspath(path)) or real_open(path, *a, **k))

    async def work(embedder):
        spec = embedder.spec
        with Gallery.create(tmp_path / "g", model_id=spec.model_id, dim=spec.dim) as g:
            first = await index_folder(root, g, embedder, batch_size=4, workers=2)
            assert first.indexed == 6 and first.duplicates == 1 and len(g) == 6
            query = await embedder.embed(_pixels(root / "0007_c2_f0001234.jpg", spec)[None])
            best = g.search(query, 1, model_id=spec.model_id)[0][0]
            people = {g.get(i).person_id for i in range(1, 7)}
            second = await index_folder(root, g, embedder, batch_size=4)
            return first, best, people, second, len(g)

    first, best, people, second, count = asyncio.run(with_embedder(tiny_artifact, work))
    reasons = dict(first.skipped)
    assert set(reasons) == {
        "0003_c1s1_000001_00.jpg",
        "0003_c1s1_000002_00.jpg",
        "0003_c1s1_000003_00.jpg",
        "0003_c1s1_000004_00.jpg",
        "notes.txt",
    }
    assert reasons["0003_c1s1_000001_00.jpg"].startswith("unsupported_media_type")
    assert reasons["0003_c1s1_000002_00.jpg"].startswith("invalid_image")
    assert reasons["0003_c1s1_000003_00.jpg"].startswith("image_too_small")
    assert "outside the folder" in reasons["0003_c1s1_000004_00.jpg"]
    assert str(canary) not in opened and opened  # the symlink's target was never opened
    assert (best.record.person_id, best.record.camera_id, best.record.source) == ("0007", "2", "0007_c2_f0001234.jpg")
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert people == {"0001", "0002", "0007", "person9"}
    assert second.indexed == 0 and second.duplicates == 7 and count == 6


def _pixels(path: Path, spec):
    from formats.images import load_image

    return load_image(str(path), spec.input.height, spec.input.width)


def test_cli_indexes_a_csv_manifest(tmp_path, tiny_artifact, capsys):
    root = tmp_path / "shots"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(cv2.imencode(".png", np.full((64, 32, 3), 40 * i, np.uint8))[1].tobytes())
    (tmp_path / "secret.png").write_bytes((root / "0.png").read_bytes())
    (root / "list.csv").write_text(
        "path,person_id,camera_id,captured_at,track_id\n"
        "0.png,alice,cam1,2026-01-02T03:04:05,t1\n"
        "1.png,alice,cam2,1767323045.5,\n"
        "2.png,bob,cam1,,t9\n"
        "../secret.png,eve,cam1,,\n"
        f"{tmp_path / 'secret.png'},eve,cam1,,\n"
        "missing.png,bob,cam1,,\n"
    )
    args = [str(root / "list.csv"), "--gallery", str(tmp_path / "g"), "--artifact", str(tiny_artifact)]
    args += ["--no-progress", "--summary-json", str(tmp_path / "summary.json")]
    assert main(args) == 1  # 1: missing.png was not added (named in the summary)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["indexed"] == 3 and summary["skipped"] == 3
    assert "indexed 3" in capsys.readouterr().out
    with Gallery.open(tmp_path / "g", readonly=True) as g:
        records = [g.get(i) for i in range(1, 4)]
    assert [(r.person_id, r.camera_id, r.track_id) for r in records] == [
        ("alice", "cam1", "t1"),
        ("alice", "cam2", None),
        ("bob", "cam1", "t9"),
    ]
    assert records[0].captured_at == 1767323045.0 and records[1].captured_at == 1767323045.5
    assert main(args) == 1  # again: all duplicates, and missing.png still not added
    assert json.loads((tmp_path / "summary.json").read_text())["duplicates"] == 3


# -- kept crops ----------------------------------------------------------------------------------------------


def _kept_files(store_root: Path) -> dict[str, tuple[int, int]]:
    """Every file under a crop store (temporaries included) with its inode and modification time."""
    return {
        str(p.relative_to(store_root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in store_root.rglob("*")
        if p.is_file()
    }


def test_keep_crops_through_reid_index_then_the_api_serves_the_exact_bytes(tmp_path, crops, tiny_artifact, capsys):
    root, canary = crops
    gallery = tmp_path / "gallery"
    index = ["index", str(root), "--gallery", str(gallery), "--artifact", str(tiny_artifact)]
    assert cli_main(index[:2] + ["--keep-crops"]) == 2  # through the API it is the server's setting
    assert "needs --gallery" in capsys.readouterr().err
    assert cli_main([*index, "--keep-crops"]) == 1

    store = CropStore.open(gallery / "crops")
    good = {name: (root / name).read_bytes() for name in GOOD}
    assert set(store.hashes()) == {hashlib.sha256(data).hexdigest() for data in good.values()}
    assert store.get(hashlib.sha256(canary.read_bytes()).hexdigest()) is None  # never read, never kept
    before = _kept_files(gallery / "crops")

    # Again, in process: nothing added, no crop written (same files, same inodes, same times, no temporaries).
    args = [str(root), "--gallery", str(gallery), "--artifact", str(tiny_artifact), "--keep-crops", "--no-progress"]
    assert main([*args, "--summary-json", str(tmp_path / "again.json")]) == 1
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["indexed"] == 0 and again["duplicates"] == 7
    assert _kept_files(gallery / "crops") == before

    settings = gallery_settings(gallery, artifact=tiny_artifact, keep_crops=True)
    with LiveServer(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/gallery").json()["count"] == len(good)
        served = {}
        for item_id in range(1, len(good) + 1):
            item = client.get(f"/v1/gallery/{item_id}").json()
            image = client.get(f"/v1/gallery/{item_id}/image")
            assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
            served[item["source"]] = image.content
    assert served == good


def test_keep_crops_fills_the_store_of_a_gallery_indexed_without_it(tmp_path, crops, tiny_artifact):
    root, _ = crops
    gallery = tmp_path / "gallery"
    args = [str(root), "--gallery", str(gallery), "--artifact", str(tiny_artifact), "--no-progress"]
    assert main(args) == 1  # 1: the bad files were not added
    assert not (gallery / "crops").exists()
    assert main([*args, "--keep-crops", "--crops-dir", str(tmp_path / "kept")]) == 1
    with Gallery.open(gallery, readonly=True) as g:
        hashes = {g.get(i).content_hash for i in range(1, len(g) + 1)}
    assert len(hashes) == len(GOOD) and set(CropStore.open(tmp_path / "kept").hashes()) == hashes


def test_a_full_crop_store_stops_before_the_batch_that_does_not_fit(tmp_path, crops, tiny_artifact, capsys):
    root, _ = crops
    gallery, kept = tmp_path / "gallery", tmp_path / "kept"
    # Batches of 4 files in name order: the last holds 0007_c2_f0001234.jpg and person9/anything_c4.jpg.
    last = ["0007_c2_f0001234.jpg", "person9/anything_c4.jpg"]
    cap = sum((root / name).stat().st_size for name in GOOD) - 1
    args = [str(root), "--gallery", str(gallery), "--artifact", str(tiny_artifact), "--no-progress", "--keep-crops"]
    args += ["--crops-dir", str(kept), "--batch-size", "4"]
    assert main([*args, "--crops-max-bytes", str(cap)]) == 1
    err = capsys.readouterr().err
    assert "crop store" in err and "full" in err and f"cap of {cap} bytes" in err and "run again" in err

    def state():
        with Gallery.open(gallery, readonly=True) as g:
            records = [g.get(i) for i in range(1, len(g) + 1)]
        return {r.source for r in records}, {r.content_hash for r in records}, set(CropStore.open(kept).hashes())

    sources, hashes, kept_hashes = state()
    assert sources == set(GOOD) - set(last)  # the batches before it, whole; none of it
    assert kept_hashes == hashes  # no item without its crop, no crop of an item that was not added

    assert main(args) == 1  # the default cap: it resumes where it stopped
    sources, hashes, kept_hashes = state()
    assert sources == set(GOOD) and kept_hashes == hashes


def test_keep_crops_arguments_are_checked(tmp_path, tiny_artifact, capsys):
    base = [str(tmp_path), "--artifact", str(tiny_artifact)]
    refused = {
        "need --keep-crops": [*base, "--gallery", str(tmp_path / "g"), "--crops-dir", str(tmp_path / "c")],
        "needs --crops-dir": [*base, "--gallery", "milvus://127.0.0.1:19530/people", "--keep-crops"],
        "at least 1": [*base, "--gallery", str(tmp_path / "g"), "--keep-crops", "--crops-max-bytes", "-5"],
    }
    for message, argv in refused.items():
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err, message
