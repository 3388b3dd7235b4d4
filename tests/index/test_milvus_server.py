"""index.milvus against a real Milvus server, not only Milvus Lite.

The PyPI package `milvus` (2.3.5, a standalone server binary with its own etcd; the dev extra) is started for this
module in a temporary folder and stopped by its own process (never by name). index.milvus needs Milvus 2.5 or
newer (nullable VARCHAR fields, an INVERTED index on VARCHAR, database properties; measured: against 2.3.5 every
conformance test fails on one of the three), so against that server the test is that the backend refuses it by
name at open, before it creates anything. pymilvus 3.0.2 connects to both.

With REID_TEST_MILVUS_URI=milvus://HOST:PORT naming a 2.5+ server (e.g. the compose file's milvusdb/milvus:v2.5.16),
the whole conformance suite (tests/index/test_conformance.py) is also collected against it.
"""

import itertools
import os
import socket

import pytest

from index.backends import open_gallery
from index.errors import GalleryError

pymilvus = pytest.importorskip("pymilvus", reason="pymilvus is in the server extra")

if os.environ.get("REID_TEST_MILVUS_URI"):
    from tests.index.test_conformance import *  # noqa: E402, F403 (the suite, collected again against this server)

_collections = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pypi_milvus_server(tmp_path_factory):
    """host:port of the PyPI package's Milvus server, up for this module."""
    milvus = pytest.importorskip("milvus", reason="the PyPI milvus server is in the dev extra")
    server = milvus.MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    server.listen_port = _free_port()
    try:
        try:
            server.start()  # waits for /healthz: 10-20 s here
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"the Milvus server did not start: {exc}")
        yield f"127.0.0.1:{server.listen_port}"
    finally:
        server.stop()  # terminates the `milvus run standalone` process it started, by its pid


def test_a_milvus_server_older_than_2_5_is_refused_by_name(pypi_milvus_server):
    version = pymilvus.MilvusClient(f"http://{pypi_milvus_server}", timeout=30).get_server_version()
    assert version.lstrip("v").startswith("2.3"), version  # the server the package ships
    uri = f"milvus://{pypi_milvus_server}/c{next(_collections)}"
    with pytest.raises(GalleryError, match=r"older than 2\.5.*run Milvus 2\.5 or newer"):
        open_gallery(uri, model_id="m", dim=8)
    client = pymilvus.MilvusClient(f"http://{pypi_milvus_server}", timeout=30)
    assert client.list_collections() == []  # refused before anything was created
    with pytest.raises(GalleryError, match="older than 2.5"):
        open_gallery(uri)  # opening an existing name is refused the same way


if os.environ.get("REID_TEST_MILVUS_URI"):

    @pytest.fixture
    def uri():  # noqa: F811 (replaces the suite's backends by the real server)
        """(uri, collection) of a gallery nobody has created yet, on the real server."""
        address = os.environ["REID_TEST_MILVUS_URI"].removeprefix("milvus://").split("/")[0]
        return f"milvus://{address}/c{next(_collections)}", None
