"""The corruption suite's cases that apply to the Milvus backend (Milvus Lite here): the connection lost before
and in the middle of a write, the collection dropped while open and between opens, another model, and stored
metadata the API could not serve. Each must keep every acknowledged item intact or refuse with a reason.

Milvus has no files of ours to damage; its own storage is Milvus' business. What the client raises reaches callers
as the gallery's errors (GalleryUnavailable for a connection lost, MissingLog for a collection gone); the evidence
that a dropped collection held items is a property of the database (index/milvus.py explains both).
"""

import contextlib
import itertools
import json
import logging
import socket
import threading

import numpy as np
import pytest

from index import open_gallery
from index.errors import GalleryError, GalleryUnavailable, MissingLog, ModelMismatch
from index.metadata import UNREADABLE, MetadataError, check
from index.records import Record
from tests.index.vectors import brute_force, clustered

pytest.importorskip("milvus_lite", reason="Milvus Lite is in the milvus extra (make setup installs it)")
import grpc  # noqa: E402 (only once Milvus Lite is known to be installed)
from pymilvus import MilvusException  # noqa: E402
from pymilvus.exceptions import ConnectError, DataNotMatchException, DescribeCollectionException  # noqa: E402

from index.milvus import DEFAULT_TIMEOUT_S, HELD_ITEMS, gallery_error  # noqa: E402

MODEL, DIM, N = "milvus-corruption", 16, 60
_names = itertools.count()


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory):
    return tmp_path_factory.mktemp("lite") / "galleries.db"


@pytest.fixture
def filled(lite_file):
    """(collection name, vectors, records by id) of a closed collection of N acknowledged items."""
    name = f"c{next(_names)}"
    xb = clustered(N, DIM, seed=5)
    records = [Record(person_id=f"p{i}", camera_id=str(i % 3), metadata={"i": i}) for i in range(N)]
    with open_gallery(lite_file, model_id=MODEL, dim=DIM, collection=name) as g:
        ids = g.add(xb, records, model_id=MODEL)
    return name, xb, dict(zip(ids, records, strict=True))


def reopen(lite_file, name, **kw):
    return open_gallery(lite_file, model_id=MODEL, dim=DIM, collection=name, **kw)


def check_intact(g, xb: np.ndarray, acked: dict[int, Record]) -> dict[int, tuple[np.ndarray, Record]]:
    """Every acknowledged item, with its vector and record, and exact top-k answers over all that is served;
    returns the items served that were not acknowledged."""
    ids, vectors, records = g.scan(0, 100_000)
    served = {int(i): (x, r) for i, x, r in zip(ids, vectors, records, strict=True)}
    for n, gid in enumerate(sorted(acked)):
        x, r = served[gid]
        assert (r.person_id, r.metadata) == (acked[gid].person_id, acked[gid].metadata)
        assert np.allclose(x, xb[n], atol=1e-6)
    hits = g.search(xb[:10], 5, model_id=MODEL)
    _, expected = brute_force(vectors, ids, xb[:10], 5)
    assert [[h.id for h in row] for row in hits] == expected.tolist()
    return {gid: item for gid, item in served.items() if gid not in acked}


def test_another_model_or_dim_is_refused(lite_file, filled):
    name, xb, acked = filled
    with pytest.raises(ModelMismatch):
        open_gallery(lite_file, model_id="another-model", dim=DIM, collection=name)
    with pytest.raises(ModelMismatch):
        open_gallery(lite_file, model_id=MODEL, dim=DIM * 2, collection=name)
    with reopen(lite_file, name) as g:
        check_intact(g, xb, acked)


def _lose_connection_after(g, calls: int) -> None:
    """The client's inserts succeed ``calls`` times, then the connection is gone."""
    insert = g._client.insert
    done = itertools.count()

    def flaky(*args, **kwargs):
        if next(done) >= calls:
            raise MilvusException(code=2, message="connection lost")
        return insert(*args, **kwargs)

    g._client.insert = flaky


@pytest.mark.parametrize("after", [0, 1], ids=["before the write", "mid-write (after its first 1000 rows)"])
def test_a_connection_lost_during_a_write_keeps_every_acknowledged_item(lite_file, filled, after):
    name, xb, acked = filled
    more = clustered(1500, DIM, seed=6)  # inserted in chunks of 1000: the second chunk meets the lost connection
    with reopen(lite_file, name) as g:
        _lose_connection_after(g, after)
        with pytest.raises(GalleryUnavailable):
            g.add(more, [Record(person_id="unacked", metadata={"j": j}) for j in range(1500)], model_id=MODEL)
    with reopen(lite_file, name) as g:
        # Rows of the failed write that reached Milvus stay, unacknowledged but whole: each with its own vector
        # and record, under an id no acknowledged item has (the API's add_new finds them again by content hash).
        extra = check_intact(g, xb, acked)
        assert len(extra) == 1000 * after == len(g) - len(acked)
        for x, record in extra.values():
            assert record.person_id == "unacked" and record.metadata["j"] < 1000
            assert np.allclose(x, more[record.metadata["j"]], atol=1e-6)


def test_a_lost_connection_is_a_gallery_error(lite_file, filled):
    name, xb, acked = filled
    with reopen(lite_file, name) as g:
        _lose_connection_after(g, 0)
        with pytest.raises(GalleryUnavailable) as caught:
            g.add(xb[:1], [Record()], model_id=MODEL)
        assert isinstance(caught.value.__cause__, MilvusException)  # the client's error stays for the logs
        assert len(g) == len(acked)  # nothing counted that did not go in


def test_a_milvus_that_stopped_answering_is_unavailable(tmp_path):
    """Not a simulated error: Milvus Lite's own gRPC server stopped under an open gallery (its server threads run in
    this process, kept by milvus_lite's server manager), as a Milvus server that went away."""
    from milvus_lite.server_manager import server_manager_instance

    path = tmp_path / "stops.db"
    xb = clustered(4, DIM, seed=8)
    g = open_gallery(path, model_id=MODEL, dim=DIM)
    try:
        g.add(xb, [Record() for _ in xb], model_id=MODEL)
        server, _, _ = server_manager_instance._servers[str(path.resolve())]
        server.stop(grace=0)
        for call in (lambda: g.search(xb[:1], 2, model_id=MODEL), lambda: g.get(1), lambda: g.stats()):
            with pytest.raises(GalleryUnavailable):
                call()
        with pytest.raises(GalleryUnavailable):
            g.add(xb[:1], [Record()], model_id=MODEL)
    finally:
        with contextlib.suppress(GalleryError):
            g.close()


@contextlib.contextmanager
def _silent_listener(port: int):
    """A socket on ``port`` that accepts connections and never answers: a Milvus that hangs (or a host that went
    away without closing its connections), where a call without a deadline would wait on gRPC's own patience."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    held = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _deadline_exceeded(exc: BaseException) -> bool:
    """Whether a gRPC deadline (the call's timeout) is what ended it, anywhere in its chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # pymilvus re-raises errors as their own cause
        seen.add(id(exc))
        code = exc.code() if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED or "Retry timeout" in str(exc):
            return True
        exc = exc.__cause__
    return False


@pytest.mark.timeout(120)  # without the deadline each of these calls waits on gRPC's and pymilvus' own retries
def test_a_milvus_that_hangs_is_unavailable_once_the_timeout_passes(tmp_path):
    """Milvus Lite's server stopped and its port taken by a socket that never answers: every call fails with
    GalleryUnavailable because its deadline (open_gallery's timeout) passed, not after pymilvus' own retries."""
    from milvus_lite.server_manager import server_manager_instance

    path = tmp_path / "hangs.db"
    xb = clustered(4, DIM, seed=8)
    g = open_gallery(path, model_id=MODEL, dim=DIM, timeout=0.5)
    try:
        assert g.timeout == 0.5 and g.stats()["timeout_s"] == 0.5
        g.add(xb, [Record() for _ in xb], model_id=MODEL)
        server, _, port = server_manager_instance._servers[str(path.resolve())]
        server.stop(grace=0).wait()
        with _silent_listener(port):
            for call in (
                lambda: g.search(xb[:1], 2, model_id=MODEL),
                lambda: g.get(1),
                lambda: g.add(xb[:1], [Record()], model_id=MODEL),
            ):
                with pytest.raises(GalleryUnavailable) as caught:
                    call()
                assert _deadline_exceeded(caught.value), repr(caught.value.__cause__)
            assert len(g) == len(xb)  # the write that timed out is not counted
    finally:
        with contextlib.suppress(GalleryError):
            g.close()


def test_the_timeout_reaches_the_milvus_backend_only(tmp_path):
    with open_gallery(tmp_path / "default.db", model_id=MODEL, dim=DIM) as g:
        assert g.timeout == DEFAULT_TIMEOUT_S
    with open_gallery(tmp_path / "patient.db", model_id=MODEL, dim=DIM, timeout=None) as g:
        assert g.timeout is None
    with pytest.raises(ValueError, match="timeout"):
        open_gallery(tmp_path / "bad.db", model_id=MODEL, dim=DIM, timeout=0)
    with open_gallery(tmp_path / "folder", model_id=MODEL, dim=DIM, timeout=0.5) as g:  # ignored: never leaves
        assert g.backend == "embedded"


def _rpc_error(code: grpc.StatusCode) -> grpc.RpcError:
    error = grpc.RpcError()
    error.code = lambda: code
    error.details = lambda: "injected"
    return error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (MilvusException(code=2, message="Fail connecting to server"), GalleryUnavailable),
        (ConnectError(message="no route to host"), GalleryUnavailable),
        (MilvusException(code=8, message="rate limit exceeded"), GalleryUnavailable),
        (MilvusException(code=5, message="service internal error", retriable=True), GalleryUnavailable),
        (MilvusException(message="Retry timeout: 10s", code=grpc.StatusCode.DEADLINE_EXCEEDED), GalleryUnavailable),
        (_rpc_error(grpc.StatusCode.UNAVAILABLE), GalleryUnavailable),
        (ConnectionResetError("reset by peer"), GalleryUnavailable),
        (DescribeCollectionException(code=100, message="collection 'x' does not exist"), MissingLog),
        (MilvusException(code=1100, message="invalid parameter", is_input_error=True), GalleryError),
        (DataNotMatchException(message="field should be a json"), GalleryError),
        (_rpc_error(grpc.StatusCode.INVALID_ARGUMENT), GalleryError),
    ],
    ids=lambda v: type(v).__name__,
)
def test_each_client_error_becomes_a_gallery_error(lite_file, raised, expected):
    """What the Milvus client raises (pymilvus' exceptions, gRPC's, the socket's) reaches callers as one of the
    gallery's errors: transient ones as GalleryUnavailable (503 and Retry-After), a gone collection as MissingLog."""
    from index.backends import parse_uri

    error = gallery_error(raised, parse_uri(lite_file, collection="x"))
    assert type(error) is expected


def test_a_collection_dropped_while_open_is_never_served(lite_file, filled):
    name, xb, _ = filled
    g = reopen(lite_file, name)
    g._client.drop_collection(name)
    for read in (lambda: g.search(xb[:1], 5, model_id=MODEL), lambda: g.get(1), lambda: g.records([1, 2])):
        with pytest.raises(Exception):  # noqa: B017, PT011 (refused, whatever the type: never an empty answer)
            read()
    with pytest.raises(Exception):  # noqa: B017, PT011
        g.add(xb[:1], [Record()], model_id=MODEL)
    g.close()


def test_a_collection_dropped_while_open_is_a_gallery_error(lite_file, filled):
    name, xb, _ = filled
    g = reopen(lite_file, name)
    g._client.drop_collection(name)
    for call in (
        lambda: g.search(xb[:1], 5, model_id=MODEL),
        lambda: g.get(1),
        lambda: g.scan(0, 10),
        lambda: g.stats(),
        lambda: g.remove([1]),
        lambda: g.add(xb[:1], [Record()], model_id=MODEL),
    ):
        with pytest.raises(MissingLog, match=name):  # 503 at the API, as a folder whose log is gone
            call()
    g.close()


def test_a_collection_dropped_between_opens_is_not_served_empty(lite_file, filled):
    name, _, acked = filled
    with reopen(lite_file, name) as g:
        g._client.drop_collection(name)
    with pytest.raises(MissingLog, match="allow_missing_log"):
        with reopen(lite_file, name) as g:
            assert len(g) == len(acked)
    with pytest.raises(MissingLog):  # opened as an existing gallery (no model given): refused the same way
        open_gallery(lite_file, collection=name)
    with pytest.raises(MissingLog):  # and refused again: a refusal changes nothing
        reopen(lite_file, name)


def test_allow_missing_log_starts_a_dropped_collection_empty(lite_file, filled, caplog):
    name, xb, _ = filled
    with reopen(lite_file, name) as g:
        g._client.drop_collection(name)
    with caplog.at_level(logging.WARNING, logger="index.milvus"), reopen(lite_file, name, allow_missing_log=True) as g:
        assert len(g) == 0 and g.search(xb[:1], 5, model_id=MODEL) == [[]]
        assert any(name in line for line in g.stats()["recovered"])
    assert any("started empty as allowed" in r.getMessage() for r in caplog.records)
    # The new collection never held an item: dropping it loses nothing, so it may be created again freely...
    with reopen(lite_file, name) as g:
        g._client.drop_collection(name)
    with reopen(lite_file, name) as g:
        [gid] = g.add(xb[:1], [Record(person_id="again")], model_id=MODEL)
        assert g.get(gid).person_id == "again"
    # ...until it holds items again.
    with reopen(lite_file, name) as g:
        g._client.drop_collection(name)
    with pytest.raises(MissingLog):
        reopen(lite_file, name)


def test_a_gallery_that_never_held_items_may_be_dropped_and_created_again(lite_file):
    name = f"c{next(_names)}"
    with open_gallery(lite_file, model_id=MODEL, dim=DIM, collection=name) as g:
        g._client.drop_collection(name)
    with open_gallery(lite_file, model_id=MODEL, dim=DIM, collection=name) as g:
        assert len(g) == 0


def test_a_gallery_written_before_the_evidence_existed_gets_it_on_open(lite_file, filled):
    """A collection filled by a version that kept no evidence in the database is recorded on its next open."""
    name, _, _ = filled
    with reopen(lite_file, name) as g:
        g._client.drop_database_properties("default", [HELD_ITEMS + name])  # as an older version left it
    with reopen(lite_file, name) as g:
        assert HELD_ITEMS + name in g._client.describe_database("default")
        g._client.drop_collection(name)
    with pytest.raises(MissingLog):
        reopen(lite_file, name)


UNSERVABLE = {
    "nested 300 levels": json.loads('{"a": ' * 300 + "1" + "}" * 300),
    "NaN": {"x": float("nan")},
    "infinity": {"x": float("inf")},
}


@pytest.mark.parametrize("case", list(UNSERVABLE))
def test_metadata_the_api_cannot_serve_is_refused_or_marked(lite_file, case):
    meta = UNSERVABLE[case]
    with pytest.raises(MetadataError):
        check(meta)  # what the embedded store refuses
    with open_gallery(lite_file, model_id=MODEL, dim=DIM, collection=f"c{next(_names)}") as g:
        try:
            [gid] = g.add(clustered(1, DIM, seed=7), [Record(metadata=meta)], model_id=MODEL)
        except ValueError:
            assert len(g) == 0 and g.scan(0, 10)[0].size == 0  # refused before anything was written
            return
        got = g.get(gid).metadata
        check(got)  # served: then it must be servable, the marker or the value unchanged
        assert set(got) == {UNREADABLE} or got == meta


def test_an_integer_milvus_cannot_hold_is_refused_before_the_write(lite_file):
    with open_gallery(lite_file, model_id=MODEL, dim=DIM, collection=f"c{next(_names)}") as g:
        kept = {"frame": 2**63 - 1, "nested": {"list": [1.5, -(2**63), "text", None, True]}}
        [gid] = g.add(clustered(1, DIM, seed=9), [Record(metadata=kept)], model_id=MODEL)
        with pytest.raises(MetadataError, match="64 bits"):
            g.add(clustered(1, DIM, seed=10), [Record(metadata={"big": 2**64})], model_id=MODEL)
        assert len(g) == 1 and g.get(gid).metadata == kept


@pytest.mark.parametrize(
    "stored",
    [json.loads('{"a": ' * 100 + "1" + "}" * 100), "[1, 2]"],
    ids=["100 levels", "an array"],
)
def test_stored_metadata_that_cannot_be_served_reads_as_the_marker(lite_file, filled, stored):
    """A row written around this module (an older version, another program: what pymilvus lets through) is served
    with the marker, never failing the get or the search that meets it."""
    name, xb, acked = filled
    with reopen(lite_file, name) as g:
        gid = min(acked)
        row = g._client.query(name, filter=f"id == {gid}", output_fields=["*"])[0]
        g._client.upsert(name, [{**row, "metadata": stored}])
        got = g.get(gid).metadata
        assert set(got) == {UNREADABLE}
        check(got)
        [hits] = g.search(xb[:1], 1, model_id=MODEL)
        assert hits[0].id == gid and set(hits[0].record.metadata) == {UNREADABLE}
        assert g.get(gid + 1).metadata == acked[gid + 1].metadata  # the others unchanged
