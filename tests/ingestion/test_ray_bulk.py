"""Bulk indexing with the embedding on Ray (local Ray, two actors) builds the gallery the threaded path builds: the
same content hashes with the same labels, the same skips and counts, the same top-5 answers, the same kept crops; a
rerun adds nothing; and the command line
(`python -m ingestion.bulk --ray ADDRESS`, `reid index --ray --keep-crops`) joins a running Ray and writes to a
Milvus Lite gallery as well."""

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the cluster extra (ray[data]) is not installed")

from client.cli import main as reid_main  # noqa: E402 (after the skip: without Ray nothing here runs)
from embedders.base import create_embedder  # noqa: E402
from formats.images import load_image  # noqa: E402
from index import open_gallery  # noqa: E402
from index.crops import CropStore  # noqa: E402
from index.gallery import Gallery  # noqa: E402
from ingestion.bulk import index_folder  # noqa: E402
from ingestion.cli import parse_bulk_args as parse_args  # noqa: E402
from ingestion.ray_bulk import index_folder_ray  # noqa: E402

pytestmark = pytest.mark.slow  # Ray's start and its worker processes take tens of seconds on a shared machine


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (starting Ray is the slow part), two CPUs: two embedding actors."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def crops(tmp_path, synth_data):
    """The synthetic gallery crops plus a copy of one, files that are not images, a truncated JPEG twice (same
    bytes), and a symlink out of the folder."""
    root = tmp_path / "crops"
    shutil.copytree(synth_data / "bounding_box_test", root)
    first = sorted(root.glob("*.jpg"))[0]
    shutil.copy(first, root / "9999_c1s1_000001_00.jpg")
    (root / "9998_c1s1_000001_00.jpg").write_text("not an image")
    broken = first.read_bytes()[:300]
    (root / "9997_c1s1_000001_00.jpg").write_bytes(broken)
    (root / "9997_c2s1_000001_00.jpg").write_bytes(broken)
    outside = tmp_path / "outside.jpg"
    shutil.copy(first, outside)
    (root / "9996_c1s1_000001_00.jpg").symlink_to(outside)
    (root / "notes.txt").write_text("a note")
    return root


def contents(gallery: Gallery, root) -> dict:
    """content hash -> the labels stored with it, for every file of root the gallery holds."""
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()]
    found = gallery.find_hashes(hashes)
    fields = ("person_id", "camera_id", "source", "metadata")
    return {h: tuple(getattr(gallery.get(i), f) for f in fields) for h, i in found.items()}


def top5(gallery: Gallery, xq, model_id) -> list[list[tuple[str, float]]]:
    return [
        [(hit.record.content_hash, round(hit.score, 4)) for hit in hits]
        for hits in gallery.search(xq, 5, model_id=model_id)
    ]


def comparable(summary) -> dict:
    return {k: v for k, v in summary.to_dict().items() if k not in ("seconds", "images_per_s")}


def kept_files(folder) -> dict[str, bytes]:
    """Every file of a crop store's folder (its path inside the folder) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def held_hashes(gallery: Gallery) -> set[str]:
    ids, _, records = gallery.scan(0, 100_000)
    assert len(ids) == len(gallery)
    return {r.content_hash for r in records}


def test_ray_gallery_equals_threaded_gallery(ray_address, crops, synth_data, tiny_artifact, tmp_path):
    queries = sorted((synth_data / "query").glob("*.jpg"))[::7][:4]

    async def threaded():
        async with create_embedder("onnx", artifact=tiny_artifact, intra_op_threads=1) as embedder:
            spec = embedder.spec
            pixels = [load_image(str(q), spec.input.height, spec.input.width) for q in queries]
            xq = await embedder.embed(np.stack(pixels))
            with Gallery.create(tmp_path / "threaded", model_id=spec.model_id, dim=spec.dim) as g:
                store = CropStore.open(tmp_path / "threaded-crops")
                summary = await index_folder(crops, g, embedder, batch_size=16, workers=2, crops=store)
                return spec, xq, summary, contents(g, crops), top5(g, xq, spec.model_id)

    spec, xq, expected, expected_contents, expected_top5 = asyncio.run(threaded())
    assert expected.indexed > 20 and expected.duplicates == 1 and len(expected.skipped) == 5
    expected_crops = kept_files(tmp_path / "threaded-crops")
    assert len(expected_crops) == expected.indexed

    settings = {"backend": "onnx", "artifact": tiny_artifact}
    with Gallery.create(tmp_path / "ray", model_id=spec.model_id, dim=spec.dim) as g:
        store = CropStore.open(tmp_path / "ray-crops")
        first = index_folder_ray(crops, g, spec, settings, batch_size=16, actors=2, crops=store)
        assert comparable(first) == comparable(expected)  # counts, and every skip with its reason, in order
        assert contents(g, crops) == expected_contents
        assert top5(g, xq, spec.model_id) == expected_top5
        # Exactly the crops of the items it added, named and written as the threaded path writes them.
        assert kept_files(tmp_path / "ray-crops") == expected_crops
        assert set(store.hashes()) == held_hashes(g)
        again = index_folder_ray(crops, g, spec, settings, batch_size=16, actors=2, crops=store)
        assert again.indexed == 0 and again.duplicates == first.indexed + first.duplicates
        assert again.skipped == first.skipped and len(g) == first.indexed
        assert kept_files(tmp_path / "ray-crops") == expected_crops


def test_command_line_joins_a_running_ray_and_writes_to_milvus_lite(
    ray_address, synth_data, tiny_artifact, tmp_path, capfd, monkeypatch
):
    pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")
    folder, gallery, summary = synth_data / "bounding_box_test", tmp_path / "g.db", tmp_path / "summary.json"
    command = [sys.executable, "-m", "ingestion.bulk", str(folder), "--gallery", str(gallery)]
    command += ["--artifact", str(tiny_artifact), "--ray", ray_address, "--ray-actors", "2", "--batch-size", "16"]
    done = subprocess.run([*command, "--summary-json", str(summary), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    files = sorted(folder.glob("*.jpg"))
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    written = json.loads(summary.read_text())
    assert written["indexed"] == len(distinct) and written["indexed"] + written["duplicates"] == len(files)
    # `reid index --ray --keep-crops` runs the same command; a second run finds every file already there and keeps
    # the crops the first run did not (a Milvus gallery has no folder: REID_CROPS_DIR says where, as for the API).
    monkeypatch.setenv("REID_CROPS_DIR", str(tmp_path / "crops"))
    capfd.readouterr()
    rc = reid_main(
        ["index", str(folder), "--gallery", str(gallery), "--artifact", str(tiny_artifact)]
        + ["--ray", ray_address, "--keep-crops"]
    )
    assert rc == 0
    assert f"indexed 0, duplicates {len(files)}, skipped 0" in capfd.readouterr().out
    assert set(CropStore.open(tmp_path / "crops").hashes()) == distinct
    # Opened last: Milvus Lite keeps its file locked by this process until the process ends.
    with open_gallery(gallery, readonly=True) as g:
        assert g.backend == "milvus" and len(g) == len(distinct)


def test_ray_options_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path), "--gallery", str(tmp_path / "g"), "--artifact", "a", "--ray-actors", "2"])
    assert "--ray-actors needs --ray" in capsys.readouterr().err
    args = parse_args([str(tmp_path), "--gallery", str(tmp_path / "g"), "--artifact", "a", "--ray"])
    assert args.ray == "local"
    assert reid_main(["index", str(tmp_path), "--ray"]) == 2
    assert "needs --gallery" in capsys.readouterr().err


def test_the_threaded_path_never_imports_ray():
    check = "import sys, ingestion.bulk, client.cli; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
