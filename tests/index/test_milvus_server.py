"""The conformance suite (tests/index/test_conformance.py) against a real Milvus server, not only Milvus Lite.

The server is REID_TEST_MILVUS_URI (milvus://HOST:PORT, e.g. the compose file's milvusdb/milvus:v2.5.16) when set;
otherwise the PyPI package ``milvus`` (a Milvus standalone binary with its own embedded etcd, in the dev extra) is
started once for this module in a temporary folder and stopped by its own process (never by name).

index.milvus needs a Milvus 2.5 server or newer: nullable VARCHAR fields (2.5), an INVERTED index on VARCHAR and
database properties (DescribeDatabase; both 2.4). The newest PyPI ``milvus`` is 2.3.x, which has none of them, so
against it the suite is skipped with that reason (measured: every test fails on one of the three); pymilvus 3.0.2
is the SDK of Milvus 3.0 and talks to 2.3.5 for everything else.

Importing the suite's tests here collects them again in this module, where ``uri`` below names a collection on the
real server instead of the embedded store or Milvus Lite.
"""

import itertools
import os
import socket

import pytest

pytest.importorskip("milvus_lite", reason="the conformance module needs Milvus Lite (milvus extra)")
pymilvus = pytest.importorskip("pymilvus", reason="pymilvus is in the server extra")

from tests.index.test_conformance import *  # noqa: E402, F403 (the suite, collected again against this server)

MIN_SERVER = (2, 5)  # nullable fields; see the module docstring
_collections = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _version(address: str) -> tuple[int, ...]:
    text = pymilvus.MilvusClient(f"http://{address}", timeout=30).get_server_version()
    return tuple(int(p) for p in text.lstrip("v").split("-")[0].split(".")[:2])


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """host:port of a real Milvus server: REID_TEST_MILVUS_URI, or the PyPI package's, up for this module."""
    if external := os.environ.get("REID_TEST_MILVUS_URI"):
        address = external.removeprefix("milvus://").split("/")[0]
        server = None
    else:
        milvus = pytest.importorskip("milvus", reason="no REID_TEST_MILVUS_URI and no PyPI milvus (dev extra)")
        server = milvus.MilvusServer()
        server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
        server.listen_port = _free_port()
        try:
            server.start()  # waits for /healthz: 10-20 s here
        except (RuntimeError, TimeoutError) as exc:
            server.stop()
            pytest.fail(f"the Milvus server did not start: {exc}")
        address = f"127.0.0.1:{server.listen_port}"
    try:
        version = _version(address)
        if version < MIN_SERVER:
            pytest.skip(
                f"Milvus {'.'.join(map(str, version))} is older than {'.'.join(map(str, MIN_SERVER))}: no nullable"
                " fields, INVERTED index or database properties, which index.milvus uses (REID_TEST_MILVUS_URI"
                " names a newer server)"
            )
        yield address
    finally:
        if server is not None:
            server.stop()  # terminates the `milvus run standalone` process it started, by its pid


@pytest.fixture
def uri(milvus_server):  # noqa: F811 (replaces the suite's backends by the real server)
    """(uri, collection) of a gallery nobody has created yet, on the real server."""
    return f"milvus://{milvus_server}/c{next(_collections)}", None
