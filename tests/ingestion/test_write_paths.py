"""Every write into a gallery goes through the one write pipeline (ingestion.pipeline): no other module calls
``add_new``, and the four entry points (the HTTP add route under uvicorn, folder/manifest indexing, the Ray path,
re-embedding from kept crops) store the same records and vectors for the same inputs: distinct crops, a copy of
one of them, and a truncated JPEG."""

import ast
import asyncio
import hashlib
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedders.base import create_embedder
from formats.spec import ModelSpec
from index.crops import CropStore
from index.gallery import Gallery
from index.records import Record
from ingestion.bulk import find_items, index_items
from ingestion.reembed import reembed
from tests.support import LiveServer, gallery_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("formats", "training", "export", "embedders", "index", "ingestion", "server", "client", "benchmarks")
ALLOWED = ("ingestion/pipeline.py", "index/")  # the pipeline, and the gallery backends themselves

# (file name, person, camera, captured_at, track): the labels every entry point is given for each input
LABELS = [
    ("a.jpg", "p1", "c1", 100.0, "t1"),
    ("b.jpg", "p1", "c2", 101.5, None),
    ("bad.jpg", "p2", "c1", None, None),
    ("a-copy.jpg", "p9", "c3", 102.0, "t9"),  # the same bytes as a.jpg: a duplicate, a.jpg's labels stay
    ("c.jpg", "p2", "c1", None, "t2"),
    ("d.jpg", "p3", "c2", 103.0, None),
]


def test_add_new_is_called_by_the_write_pipeline_only():
    callers = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(ALLOWED):
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
                if isinstance(node, ast.Attribute) and node.attr == "add_new":
                    callers.append(f"{rel}:{node.lineno}")
    assert not callers, f"add_new outside ingestion/pipeline.py: {callers}"
    pipeline = (ROOT / "ingestion/pipeline.py").read_text()
    assert "add_new(" in pipeline  # the check above looks at the right name


@pytest.fixture
def inputs(tmp_path, synth_data) -> Path:
    """A folder with the LABELS' files and a manifest that labels them."""
    root = tmp_path / "inputs"
    root.mkdir()
    distinct = [name for name, *_ in LABELS if name not in ("bad.jpg", "a-copy.jpg")]
    crops = sorted((synth_data / "bounding_box_test").glob("*.jpg"))[: len(distinct)]
    for name, source in zip(distinct, crops, strict=True):
        shutil.copy(source, root / name)
    shutil.copy(root / "a.jpg", root / "a-copy.jpg")
    (root / "bad.jpg").write_bytes((root / "b.jpg").read_bytes()[:300])  # truncated JPEG
    rows = [f"{n},{p},{c},{'' if t is None else t},{k or ''}" for n, p, c, t, k in LABELS]
    (root / "list.csv").write_text("path,person_id,camera_id,captured_at,track_id\n" + "\n".join(rows) + "\n")
    return root


def stored(path: Path) -> dict[str, tuple]:
    """content hash -> (labels, vector) of every item of a gallery."""
    with Gallery.open(path, readonly=True) as g:
        _, xb, records = g.scan(0, 1000)
    return {
        r.content_hash: ((r.person_id, r.camera_id, r.captured_at, r.track_id, r.metadata), x)
        for r, x in zip(records, xb, strict=True)
    }


def assert_same(got: dict, expected: dict) -> None:
    assert {h: labels for h, (labels, _) in got.items()} == {h: labels for h, (labels, _) in expected.items()}
    for h, (_, x) in got.items():
        np.testing.assert_allclose(x, expected[h][1], atol=1e-4)


def by_bulk(inputs: Path, tiny_artifact, where: Path) -> dict:
    async def work():
        async with create_embedder("onnx", artifact=tiny_artifact, intra_op_threads=1) as embedder:
            spec = embedder.spec
            root, items, skipped = find_items(inputs / "list.csv")
            with Gallery.create(where, model_id=spec.model_id, dim=spec.dim) as g:
                return await index_items(root, items, g, embedder, batch_size=4, workers=2)

    summary = asyncio.run(work())
    return {"indexed": summary.indexed, "duplicates": summary.duplicates, "skipped": summary.skipped}


def by_http(inputs: Path, tiny_artifact, where: Path) -> dict:
    def form(labels):
        files = [("images", (n, (inputs / n).read_bytes(), "image/jpeg")) for n, *_ in labels]
        data = {
            "person_id": [p for _, p, *_ in labels],
            "camera_id": [c for _, _, c, *_ in labels],
            "track_id": [k or "" for *_, k in labels],
        }
        if all(t is not None for _, _, _, t, _ in labels):
            data["captured_at"] = [str(t) for _, _, _, t, _ in labels]
        return {"files": files, "data": data}

    with (
        LiveServer(gallery_settings(where, artifact=tiny_artifact)) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        # A form field is given for all images of a request or for none, so the inputs go in as two requests;
        # the bad image is refused on its own (207, named with the pipeline's error) and the others are added.
        answers = []
        for part in ([lab for lab in LABELS if lab[3] is not None], [lab for lab in LABELS if lab[3] is None]):
            r = c.post("/v1/gallery", **form(part))
            answers.append(r.json())
            refused = [(part[item["index"]][0], item["error"]["code"]) for item in r.json()["items"] if item["error"]]
            assert (r.status_code, refused) in ((201, []), (207, [("bad.jpg", "invalid_image")])), r.text
        assert sum(a["failed"] for a in answers) == 1
    return {"indexed": sum(a["added"] for a in answers), "duplicates": sum(a["duplicates"] for a in answers)}


def by_reembed(inputs: Path, tiny_artifact, tmp_path: Path, where: Path) -> dict:
    """A source gallery of another model whose kept crops are the inputs (the copy and the bad one included)."""
    crops = CropStore.open(tmp_path / "source-crops")
    records = []
    for name, person, camera, at, track in LABELS:
        data = (inputs / name).read_bytes()
        crops.put(data)
        records.append(
            Record(person, camera, at, track, source=name, content_hash=hashlib.sha256(data).hexdigest(), metadata={})
        )
    with Gallery.create(tmp_path / "source", model_id="old", dim=4) as source:
        xb = np.eye(4, dtype=np.float32)[np.arange(len(records)) % 4]
        source.import_items(list(range(1, len(records) + 1)), xb, records, model_id="old")

        async def work():
            async with create_embedder("onnx", artifact=tiny_artifact, intra_op_threads=1) as embedder:
                spec = embedder.spec
                with Gallery.create(where, model_id=spec.model_id, dim=spec.dim) as dst:
                    return await reembed(source, dst, embedder, crops, batch_size=4, workers=2)

        summary = asyncio.run(work())
    return {"indexed": summary.embedded, "duplicates": summary.already, "skipped": summary.skipped}


def by_ray(inputs: Path, tiny_artifact, where: Path) -> dict:
    ray = pytest.importorskip("ray", reason="the cluster extra (ray[data]) is not installed")
    from ingestion.ray_bulk import index_items_ray  # imports Ray: only where it is installed

    spec = ModelSpec.from_json((tiny_artifact / "spec.json").read_text())
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        root, items, _ = find_items(inputs / "list.csv")
        with Gallery.create(where, model_id=spec.model_id, dim=spec.dim) as g:
            settings = {"backend": "onnx", "artifact": tiny_artifact}
            summary = index_items_ray(root, items, g, spec, settings, batch_size=2, actors=1)
    finally:
        ray.shutdown()
    return {"indexed": summary.indexed, "duplicates": summary.duplicates, "skipped": summary.skipped}


@pytest.mark.slow
def test_the_four_entry_points_store_the_same_records(inputs, tiny_artifact, tmp_path):
    bulk = by_bulk(inputs, tiny_artifact, tmp_path / "bulk")
    expected = stored(tmp_path / "bulk")
    assert bulk["indexed"] == 4 and bulk["duplicates"] == 1
    assert [(name, reason.split(":")[0]) for name, reason in bulk["skipped"]] == [("bad.jpg", "invalid_image")]
    assert expected[hashlib.sha256((inputs / "a.jpg").read_bytes()).hexdigest()][0][:2] == ("p1", "c1")

    http = by_http(inputs, tiny_artifact, tmp_path / "http")
    assert (http["indexed"], http["duplicates"]) == (4, 1)
    assert_same(stored(tmp_path / "http"), expected)

    again = by_reembed(inputs, tiny_artifact, tmp_path, tmp_path / "reembed")
    assert (again["indexed"], again["duplicates"], again["skipped"]) == (4, 1, {"undecodable crop (invalid_image)": 1})
    assert_same(stored(tmp_path / "reembed"), expected)

    ray = by_ray(inputs, tiny_artifact, tmp_path / "ray")
    assert ray == bulk
    assert_same(stored(tmp_path / "ray"), expected)
