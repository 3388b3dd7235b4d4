"""The `reid` command line after a newcomer's mistakes: one line saying what went wrong and what to do, no
traceback (unless --debug), the exit status saying whether it did what was asked, and each file it skipped or that
the server refused named with why. The server cases run the real app on 127.0.0.1 with a fake embedder."""

import socket

import pytest

from client.cli import main
from client.launch import free_port
from tests.support import FakeEmbedder, LiveServer, gallery_settings, make_spec, person_crops, write_toy_onnx

ADMIN = "cli-admin-key"
CROPS = person_crops(4, seed=21)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    settings = gallery_settings(tmp_path_factory.mktemp("cli-mistakes") / "gallery", admin_keys=ADMIN)
    with LiveServer(settings, embedder=FakeEmbedder()) as base:
        yield base


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("reid ")]
    assert "Traceback" not in err and lines, err
    return lines[-1]


def test_no_server_names_the_url_and_how_to_point_at_one(capsys, tmp_path):
    (tmp_path / "q.png").write_bytes(CROPS[0])
    nowhere = f"http://127.0.0.1:{free_port()}"
    status, _, err = run(capsys, "--url", nowhere, "search", str(tmp_path / "q.png"))
    line = one_line_error(err)
    assert status == 1 and nowhere in line and "--url" in line and "REID_URL" in line


def test_a_401_points_at_the_api_key_options(capsys, url):
    status, _, err = run(capsys, "--url", url, "stats")
    line = one_line_error(err)
    assert status == 1 and "--api-key" in line and "REID_API_KEY" in line


def test_metadata_that_is_not_json_says_what_was_expected(capsys, url, tmp_path):
    (tmp_path / "a.png").write_bytes(CROPS[0])
    args = ("--url", url, "--api-key", ADMIN, "add", str(tmp_path / "a.png"), "--person", "p")
    status, _, err = run(capsys, *args, "--metadata", "notjson")
    line = one_line_error(err)
    assert status == 2 and "JSON object" in line and '{"site": "gate 3"}' in line
    assert run(capsys, *args, "--metadata", "[1]")[0] == 2


def test_add_names_each_refused_file_adds_the_rest_and_exits_1(capsys, url, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(CROPS[1])
    bad.write_bytes(b"this is no image")
    status, out, err = run(capsys, "--url", url, "--api-key", ADMIN, "add", str(good), str(bad), "--person", "p")
    assert status == 1
    assert str(good) in out and f"refused {bad}: unsupported_media_type" in err
    assert url in err  # where it writes, said on start


def test_index_names_skipped_and_refused_files_and_exits_1(capsys, url, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    (folder / "0007_c2s1_000100_01.png").write_bytes(CROPS[2])
    (folder / "0008_c1s1_000100_01.png").write_bytes(b"\x89PNG broken")
    (folder / "holiday.png").write_bytes(CROPS[3])
    status, out, err = run(capsys, "--url", url, "--api-key", ADMIN, "index", str(folder))
    assert status == 1
    assert f"skipped {folder / 'holiday.png'}" in err and "--person" in err
    assert f"refused {folder / '0008_c1s1_000100_01.png'}" in err
    assert "added 1" in out and "skipped 1" in out and "refused 1" in out
    status, out, _ = run(capsys, "--url", url, "--api-key", ADMIN, "index", str(folder), "--person", "0009")
    assert status == 1 and "skipped 0" in out  # the broken file is still refused


@pytest.mark.parametrize(
    "argv",
    [
        ["index", "{tmp}/missing"],
        ["index", "{tmp}/missing", "--gallery", "{tmp}/G", "--artifact", "{tmp}/art"],
        ["index", "{tmp}", "--gallery", "{tmp}/G", "--artifact", "{tmp}/no-model"],
        ["gallery", "copy", "{tmp}/missing", "{tmp}/G"],
        ["calibrate", "{tmp}/missing"],
        ["serve", "--artifact", "{tmp}/no-model", "--gallery", "{tmp}/G"],
    ],
    ids=["index-api", "index-gallery", "index-artifact", "copy", "calibrate", "serve"],
)
def test_a_missing_path_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv):
    (tmp_path / "no-model").mkdir()
    args = [a.format(tmp=tmp_path) for a in argv]
    status, _, err = run(capsys, "--url", f"http://127.0.0.1:{free_port()}", *args)
    line = one_line_error(err)
    assert status == 2 and str(tmp_path) in line
    assert not (tmp_path / "G").exists()  # no empty gallery left behind


def test_an_empty_folder_through_the_api_did_nothing_and_says_so(capsys, url, tmp_path):
    status, out, err = run(capsys, "--url", url, "--api-key", ADMIN, "index", str(tmp_path))
    assert status == 1 and "added 0" in out and "nothing was added" in err


def test_debug_shows_the_traceback(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception, match="Connect"):
        main(["--debug", "--url", f"http://127.0.0.1:{port}", "stats"])


def test_index_into_a_gallery_names_each_bad_file_and_exits_1(capfd, tmp_path):
    (tmp_path / "artifact").mkdir()
    write_toy_onnx(tmp_path / "artifact" / "model.onnx", make_spec())
    folder = tmp_path / "crops"
    folder.mkdir()
    (folder / "0001_c1s1_000100_01.png").write_bytes(CROPS[0])
    (folder / "0002_c1s1_000100_01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["index", str(folder), "--gallery", str(tmp_path / "G"), "--artifact", str(tmp_path / "artifact")]
    assert main(args) == 1
    out, err = capfd.readouterr()
    assert "indexed 1" in out and "0002_c1s1_000100_01.png" in out and "could not be added" in err
    assert f"-> gallery {tmp_path / 'G'}" in err  # where it writes, said on start


def test_search_says_which_filter_values_match_nothing(capsys, url, tmp_path):
    (tmp_path / "q.png").write_bytes(CROPS[0])
    status, out, _ = run(capsys, "--url", url, "--api-key", ADMIN, "search", str(tmp_path / "q.png"), "--camera", "99")
    assert status == 0 and "no gallery item has these cameras: 99" in out
