"""The synthetic data generator: layout, names, identity splits, the query/gallery protocol, determinism."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from formats.images import load_image
from training.cli import synth_main
from training.synth import SPLITS, generate

NAME = re.compile(r"^(\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def _ids(folder: Path) -> list[tuple[int, int]]:
    """(person, camera) of every image in a split folder; fails on a malformed name."""
    out = []
    for path in sorted(folder.iterdir()):
        match = NAME.match(path.name)
        assert match, f"bad name {path.name}"
        out.append((int(match.group(1)), int(match.group(2))))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_layout_names_and_images(synth_data: Path):
    for split in SPLITS:
        items = _ids(synth_data / split)
        assert items, f"{split} is empty"
        assert all(1 <= cam <= 3 for _, cam in items)
    path = next((synth_data / "query").iterdir())
    assert load_image(str(path)).shape == (128, 64, 3)
    manifest = json.loads((synth_data / "synth.json").read_text())
    assert manifest["images"] == {split: len(list((synth_data / split).iterdir())) for split in SPLITS}


def test_train_and_test_identities_are_disjoint_halves(synth_data: Path):
    train = {pid for pid, _ in _ids(synth_data / "bounding_box_train")}
    test = {pid for pid, _ in _ids(synth_data / "query") + _ids(synth_data / "bounding_box_test")} - {0}
    assert len(train) == 4 and len(test) == 4
    assert not train & test
    assert 0 not in train  # distractors only in the gallery


def test_every_query_has_a_gallery_match_in_another_camera(synth_data: Path):
    gallery = _ids(synth_data / "bounding_box_test")
    queries = _ids(synth_data / "query")
    for pid, cam in queries:
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam in gallery), (pid, cam)
    assert len(set(queries)) == len(queries)  # at most one query per (person, camera)
    for pid in {pid for pid, _ in gallery} - {0}:
        assert len({cam for g_pid, cam in gallery if g_pid == pid}) >= 2


def test_training_identities_span_cameras(synth_data: Path):
    train = _ids(synth_data / "bounding_box_train")
    for pid in {pid for pid, _ in train}:
        cams = [cam for p, cam in train if p == pid]
        assert len(cams) >= 12 and len(set(cams)) >= 2


def test_same_seed_same_bytes_whatever_the_threads(tmp_path: Path):
    kwargs = {"ids": 4, "cams": 2, "height": 64, "width": 32, "progress": False}
    a = _files(generate(tmp_path / "a", seed=7, workers=1, **kwargs))
    b = _files(generate(tmp_path / "b", seed=7, workers=3, **kwargs))
    c = _files(generate(tmp_path / "c", seed=8, workers=1, **kwargs))
    assert a == b
    assert a != c and not set(a.items()) & set(c.items())


def test_images_of_one_person_differ(synth_data: Path):
    # Pose, view, background and camera change from shot to shot: no two images are the same pixels.
    paths = sorted((synth_data / "bounding_box_train").iterdir())[:6]
    images = [load_image(str(p)).astype(np.int16) for p in paths]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 5


def test_refuses_to_overwrite_unless_asked(tmp_path: Path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(out, ids=4, cams=2, seed=0, height=64, width=32, progress=False)
    assert (out / "mine.txt").read_text() == "keep"
    generate(out, ids=4, cams=2, seed=0, height=64, width=32, progress=False, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "query").is_dir()
    assert not (tmp_path / "set.partial").exists()


@pytest.mark.parametrize(
    "kwargs",
    [{"ids": 3, "cams": 2}, {"ids": 10, "cams": 1}, {"ids": 10, "cams": 10}, {"ids": 10, "cams": 2, "height": 8}],
)
def test_rejects_impossible_settings(tmp_path: Path, kwargs: dict):
    with pytest.raises(ValueError):
        generate(tmp_path / "x", seed=0, progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    synth_main([str(tmp_path / "cli"), "--ids", "4", "--cams", "2", "--seed", "3", "--height", "64", "--width", "32"])
    assert "query" in capsys.readouterr().out
    assert _ids(tmp_path / "cli" / "query")
