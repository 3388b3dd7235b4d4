"""The client's tracks and identities: ReIDClient.tracks / track / identities / identity against the real app,
``reid link`` on the gallery (the server stopped) and ``reid timeline ID --show out.png`` drawing the best crop of
each track (the server keeps crops)."""

from __future__ import annotations

from PIL import Image

from client.api import ReIDClient
from client.cli import main as reid
from tests.server.test_tracks_api import ADMIN, CAMERAS, PEOPLE, READER, _add_tracks, _client, _track_id
from tests.support import FakeEmbedder, LiveServer, gallery_settings


def _server(gallery_dir) -> LiveServer:
    settings = gallery_settings(gallery_dir, admin_keys=ADMIN, read_keys=READER, keep_crops=True)
    return LiveServer(settings, embedder=FakeEmbedder())


def test_link_and_timeline_through_the_client(tmp_path, capsys):
    gallery_dir = tmp_path / "gallery"
    with _server(gallery_dir) as url, _client(url) as admin:
        _add_tracks(admin, named=False)
        with ReIDClient(url, api_key=READER) as client:
            page = client.tracks(limit=4)
            rest = client.tracks(cursor=page.next_cursor)
            assert len(page.tracks) + len(rest.tracks) == PEOPLE * len(CAMERAS) and rest.next_cursor is None
            detail = client.track(_track_id(0, "c2"))  # a track id with a slash travels quoted
            assert detail.track.camera_id == "c2" and len(detail.items) == detail.track.n_items
            assert client.identities().identities == []
    assert reid(["link", "--gallery", str(gallery_dir)]) == 0
    capsys.readouterr()
    with _server(gallery_dir) as url:
        with ReIDClient(url, api_key=READER) as client:
            ident = client.track(_track_id(1, "c1")).track.identity_id
            assert ident is not None and [i.identity_id for i in client.identities(camera_id="c1").identities]
            assert [e.camera_id for e in client.identity(ident).timeline] == ["c1", "c2"]
        out = tmp_path / "timeline.png"
        assert reid(["--url", url, "--api-key", READER, "timeline", str(ident), "--show", str(out)]) == 0
        assert reid(["--url", url, "--api-key", READER, "timeline", "999"]) == 1  # no such identity: said, exit 1
    printed = capsys.readouterr()
    assert f"identity {ident}: 2 tracks" in printed.out and _track_id(1, "c2") in printed.out
    assert "no picture" not in printed.err and "no identity 999" in printed.err
    with Image.open(out) as im:
        assert im.width > im.height > 100
