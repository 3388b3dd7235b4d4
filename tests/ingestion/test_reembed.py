"""Re-embedding a live gallery for a new model from its kept crops (ingestion.reembed, `reid gallery reembed`).

Two imported networks (tests/export/import_nets.py) stand for the old and the new model: different model_ids,
different widths (32-d and 24-d). The old gallery is filled through the API with REID_KEEP_CROPS on (and two items
without it), re-embedded from the CLI into a new folder, then served with the new artifact (refused with the old).
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedders.onnx import OnnxEmbedder
from export.cli import parse_import_args as parse_args
from export.import_model import import_model
from formats.spec import ModelSpec
from index.backends import open_gallery
from index.crops import CropStore
from ingestion.cli import reembed_main as main
from ingestion.reembed import neighbour_changes, reembed
from tests.export import import_nets as nets
from tests.support import LiveServer, gallery_settings

ROOT = Path(__file__).resolve().parents[2]
PEOPLE, PER_PERSON = 4, 5  # the test identities of the synth_data fixture


def _import(args: list[str]) -> Path:
    source, out, pre, cfg = parse_args(args)
    return import_model(source, out, pre, cfg)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    old = nets.export_planar_rgb(tmp / "old.onnx")
    new = nets.export_interleaved_bgr(tmp / "new.onnx")
    return {
        "old": _import(nets.planar_rgb_args(old) + ["--out", str(tmp / "old_model"), "--threads", "1"]),
        "new": _import(nets.interleaved_bgr_args(new) + ["--out", str(tmp / "new_model"), "--threads", "1"]),
    }


def _people(synth_data: Path) -> dict[str, list[Path]]:
    by_person: dict[str, list[Path]] = {}
    for path in sorted((synth_data / "bounding_box_test").glob("*.jpg")) + sorted((synth_data / "query").glob("*.jpg")):
        if not path.name.startswith("0000"):
            by_person.setdefault(path.name[:4], []).append(path)
    chosen = [p for p in sorted(by_person) if len(by_person[p]) >= PER_PERSON][:PEOPLE]
    return {p: by_person[p][:PER_PERSON] for p in chosen}


@pytest.fixture(scope="module")
def live_gallery(models, synth_data, tmp_path_factory) -> dict:
    """A gallery served with the old model: crops kept for every person's images but the last person's two last."""
    gallery = tmp_path_factory.mktemp("live") / "gallery"
    people = _people(synth_data)
    assert len(people) == PEOPLE
    ids: dict[str, list[int]] = {}
    unkept = []
    for keep in (True, False):
        settings = gallery_settings(gallery, artifact=models["old"], keep_crops=keep)
        with LiveServer(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
            for person, paths in people.items():
                chosen = paths[:-2] if (keep and person == max(people)) else paths
                if not keep:
                    chosen = paths[-2:] if person == max(people) else []
                    unkept += chosen
                if not chosen:
                    continue
                files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in chosen]
                r = client.post("/v1/gallery", files=files, data={"person_id": person, "camera_id": "1"})
                assert r.status_code == 201, r.text
                ids.setdefault(person, []).extend(r.json()["ids"])
    return {"path": gallery, "people": people, "ids": ids, "unkept": unkept}


def _vectors(uri: Path) -> tuple[np.ndarray, list]:
    with open_gallery(uri, readonly=True) as g:
        ids, xb, records = g.scan(0, 10_000)
    return xb, records


def _nearest_other(uri: Path, persons: set[str]) -> dict[str, str]:
    """Nearest other identity per person, by brute force over every pair (what the report computes by search)."""
    xb, records = _vectors(uri)
    pids = np.array([r.person_id for r in records])
    keep = np.isin(pids, sorted(persons))
    xb, pids = xb[keep], pids[keep]
    scores = xb @ xb.T
    out = {}
    for person in sorted(set(pids)):
        mine, theirs = pids == person, pids != person
        block = scores[np.ix_(mine, theirs)]
        out[person] = pids[theirs][np.unravel_index(np.argmax(block), block.shape)[1]]
    return out


def test_reembed_from_the_cli_then_serve_with_the_new_model_only(models, live_gallery, tmp_path):
    src, dst = live_gallery["path"], tmp_path / "upgraded"
    summary_file = tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.cli",
            "gallery",
            "reembed",
            "--artifact",
            str(models["new"]),
            "--from",
            str(src),
            "--to",
            str(dst),
            "--summary-json",
            str(summary_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal
    summary = json.loads(summary_file.read_text())
    total = PEOPLE * PER_PERSON
    assert summary["source_items"] == total
    assert summary["embedded"] == summary["kept_ids"] == total - 2
    assert summary["skipped"] == {"crop not kept": 2}
    assert "identities' nearest other identity" in result.stdout

    # The report's figure, checked by brute force over the vectors of both galleries.
    persons = set(live_gallery["people"])
    before, after = _nearest_other(src, persons), _nearest_other(dst, persons)
    changed = sum(before[p] != after[p] for p in persons)
    assert summary["rank1_neighbours"]["identities"] == PEOPLE
    assert summary["rank1_neighbours"]["changed"] == changed

    # The new gallery: the new model's id and width, the same ids and metadata, the crops alongside.
    with open_gallery(dst, readonly=True) as g:
        new_spec = ModelSpec.from_json((models["new"] / "spec.json").read_text())
        assert (g.model_id, g.dim) == (new_spec.model_id, new_spec.dim)
        ids, _, records = g.scan(0, 1000)
    with open_gallery(src, readonly=True) as g:
        old = dict(zip(*g.scan(0, 1000)[::2], strict=True))
    for item_id, record in zip(ids.tolist(), records, strict=True):
        before_record = old[item_id]
        assert (record.person_id, record.camera_id, record.content_hash) == (
            before_record.person_id,
            before_record.camera_id,
            before_record.content_hash,
        )
    assert len(CropStore.open(dst / "crops")) == total - 2
    assert summary["crops_dir"] == str(dst / "crops")

    # Served with the new artifact: ready, and each kept crop finds itself under its old id.
    with LiveServer(gallery_settings(dst, artifact=models["new"])) as url, httpx.Client(base_url=url) as client:
        assert client.get("/readyz").status_code == 200
        for person, paths in live_gallery["people"].items():
            for path, item_id in zip(paths, live_gallery["ids"][person], strict=True):
                if path in live_gallery["unkept"]:
                    continue
                hit = client.post("/v1/search", files={"image": path.read_bytes()}).json()["hits"][0]
                assert (hit["id"], hit["person_id"]) == (item_id, person)
                assert hit["score"] == pytest.approx(1.0, abs=1e-5)
        first = live_gallery["ids"][min(live_gallery["people"])][0]
        assert (
            client.get(f"/v1/gallery/{first}/image").content
            == live_gallery["people"][min(live_gallery["people"])][0].read_bytes()
        )
    # ... and refused with the old one: the server never mixes two models' embeddings.
    with LiveServer(gallery_settings(dst, artifact=models["old"])) as url, httpx.Client(base_url=url) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "another model" in r.text


class FailingAfter(OnnxEmbedder):
    """The new model's embedder, failing after ``calls`` calls: an interrupted run."""

    def __init__(self, path: Path, calls: int):
        super().__init__(path, intra_op_threads=1, micro_batch=False)
        self.left = calls

    async def _embed(self, images):
        if self.left == 0:
            raise RuntimeError("interrupted")
        self.left -= 1
        return await super()._embed(images)


def test_an_interrupted_reembed_resumes_without_embedding_anything_twice(models, live_gallery, tmp_path):
    src, dst = live_gallery["path"], tmp_path / "resumed"
    spec = ModelSpec.from_json((models["new"] / "spec.json").read_text())

    async def run(calls: int | None):
        embedder = (
            FailingAfter(models["new"] / "model.onnx", calls)
            if calls is not None
            else OnnxEmbedder(models["new"] / "model.onnx", intra_op_threads=1, micro_batch=False)
        )
        async with embedder:
            with (
                open_gallery(src, readonly=True) as source,
                open_gallery(dst, model_id=spec.model_id, dim=spec.dim) as destination,
            ):
                crops = CropStore.open(src / "crops")
                return await reembed(source, destination, embedder, crops, batch_size=5)

    with pytest.raises(RuntimeError, match="interrupted"):
        asyncio.run(run(calls=2))
    with open_gallery(dst, readonly=True) as g:
        assert len(g) == 10  # two batches of 5 made it
    resumed = asyncio.run(run(calls=None))
    total = PEOPLE * PER_PERSON
    assert (resumed.already, resumed.embedded) == (10, total - 2 - 10)
    assert resumed.skipped == {"crop not kept": 2}
    again = asyncio.run(run(calls=None))
    assert (again.already, again.embedded) == (total - 2, 0)
    with open_gallery(dst, readonly=True) as g:
        ids, _, records = g.scan(0, 1000)
        assert len(ids) == total - 2 and len({r.content_hash for r in records}) == total - 2


def test_a_destination_of_another_model_is_refused(models, live_gallery, tmp_path, capsys):
    # A gallery of the old model is no destination for the new one.
    argv = ["--artifact", str(models["new"]), "--from", str(live_gallery["path"]), "--to", str(live_gallery["path"])]
    with pytest.raises(SystemExit):
        main(argv)  # the same gallery: an argument error
    other = tmp_path / "old-model-copy"
    with open_gallery(other, model_id="someone-else", dim=24):
        pass
    assert main(["--artifact", str(models["new"]), "--from", str(live_gallery["path"]), "--to", str(other)]) == 2
    assert "someone-else" in capsys.readouterr().err


def test_neighbour_changes_counts_identities_whose_nearest_other_identity_moved(tmp_path):
    from index.records import Record

    def gallery(path: Path, centres: dict[str, list[float]]):
        g = open_gallery(path, model_id="m", dim=2)
        for person, centre in centres.items():
            xb = np.array([centre, [centre[0] + 0.01, centre[1]]], np.float32)
            g.add(xb, [Record(person_id=person), Record(person_id=person)], model_id="m")
        return g

    # Before: a and b are each other's nearest, c's is b. After: b moves next to c: a's and b's nearest become c,
    # c's stays b.
    with (
        gallery(tmp_path / "before", {"a": [1, 0], "b": [0.9, 0.4], "c": [0.2, 1]}) as before,
        gallery(tmp_path / "after", {"a": [1, 0.2], "b": [0.1, 1], "c": [0.3, 1]}) as after,
    ):
        report = neighbour_changes(before, after)
    assert (report["identities"], report["changed"]) == (3, 2)
    moved = {e["person_id"]: (e["before"], e["after"]) for e in report["examples"]}
    assert moved == {"a": ("b", "c"), "b": ("a", "c")}
