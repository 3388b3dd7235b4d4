"""benchmarks.bulk: folder indexing through ingestion.bulk beside embedding alone, on a few crops."""

import json

from benchmarks.bulk import main
from tests.support import person_crops


def test_bulk_bench_indexes_every_crop_and_writes_both_rates(tiny_artifact, tmp_path):
    images = tmp_path / "crops"
    images.mkdir()
    for i, data in enumerate(person_crops(6, seed=5)):
        (images / f"{i + 1:04d}_c1s1_{i:06d}_01.png").write_bytes(data)
    (images / "notes.txt").write_text("not an image")  # skipped
    out = tmp_path / "bulk.json"
    assert (
        main(["--artifact", str(tiny_artifact), "--images", str(images), "--workdir", str(tmp_path), "--out", str(out)])
        == 0
    )
    bulk = json.loads(out.read_text())["bulk"]
    assert (bulk["images"], bulk["skipped"]) == (6, 1)
    assert bulk["bulk_images_per_s"] > 0 and bulk["embed_only_images_per_s"] > 0
