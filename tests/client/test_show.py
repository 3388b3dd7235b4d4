"""`reid search --show`: the query and its hits drawn from the server's kept crops, else from the files the
gallery's metadata names, else a picture of scores with a message saying how to get crops."""

import numpy as np
import pytest
from PIL import Image

from client.cli import main
from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

RED, GREEN = np.array([0xD7, 0x19, 0x1C]), np.array([0x1A, 0x96, 0x41])


def _frames(png) -> tuple[int, int]:
    """(green, red) frame pixels in the picture."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    near = lambda colour: int((np.abs(rgb - colour).sum(axis=2) < 30).sum())  # noqa: E731
    return near(GREEN), near(RED)


def _tiles_with_pixels(png, n_tiles: int) -> int:
    """How many of the n_tiles + 1 columns (query first) show a picture rather than a blank tile."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    middle = rgb[rgb.shape[0] // 3 : 2 * rgb.shape[0] // 3]
    inked = (np.abs(middle - 255).sum(axis=2) > 60).mean(axis=0)  # share of non-white pixels per x
    return sum(col.mean() > 0.4 for col in np.array_split(inked, n_tiles + 1))  # a blank tile: frame and text only


@pytest.fixture
def folder(tmp_path):
    crops = person_crops(3, seed=5)
    names = ["0007_c1s1_000001_00.png", "0007_c2s1_000002_00.png", "0009_c2s1_000003_00.png"]
    for name, data in zip(names, crops, strict=True):
        (tmp_path / name).write_bytes(data)
    return tmp_path, names


def _add(url, folder, names, metadata_source: bool) -> None:
    import json

    from client import ReIDClient

    with ReIDClient(url) as reid:
        for name in names[1:]:
            meta = {"source": name} if metadata_source else None
            reid.add([folder / name], name[:4], camera_id="2", metadata=meta and json.loads(json.dumps(meta)))


def test_show_draws_kept_crops(tmp_path, folder, capsys):
    folder, names = folder
    settings = gallery_settings(tmp_path / "g", keep_crops=True)
    with LiveServer(settings, embedder=FakeEmbedder()) as url:
        _add(url, folder, names, metadata_source=False)
        out = tmp_path / "shown.png"
        assert main(["--url", url, "search", str(folder / names[0]), "-k", "2", "--show", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"picture: {out}" in captured.out and "no picture" not in captured.err
    green, red = _frames(out)
    assert green > 50 and red > 50  # the query's person (0007) framed green, the other (0009) red
    assert _tiles_with_pixels(out, 2) == 3


def test_show_falls_back_to_source_files_then_says_what_is_missing(tmp_path, folder, capsys):
    folder, names = folder
    with LiveServer(gallery_settings(tmp_path / "g"), embedder=FakeEmbedder()) as url:
        _add(url, folder, names, metadata_source=True)
        found, missing = tmp_path / "found.png", tmp_path / "missing.png"
        base = ["--url", url, "search", str(folder / names[0]), "-k", "2"]
        assert main([*base, "--show", str(found), "--crops", str(folder)]) == 0
        assert "no picture" not in capsys.readouterr().err
        assert main([*base, "--show", str(missing), "--crops", str(tmp_path / "elsewhere")]) == 0
        err = capsys.readouterr().err
    assert _tiles_with_pixels(found, 2) == 3
    assert err.count("no picture of hit") == 2 and "REID_KEEP_CROPS" in err and "--crops" in err
    assert missing.is_file() and _tiles_with_pixels(missing, 2) == 1  # the query only
