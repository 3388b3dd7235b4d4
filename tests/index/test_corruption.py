"""Every file of a gallery folder, damaged every way a disk or an operator can: missing, truncated, bit-flipped,
swapped with another gallery's, stale (an older copy). Each case either serves every acknowledged item intact
(ids, records, exact search results), or refuses with CorruptGallery: never a wrong answer.

Gallery "A" is built in two batches with removals (closed cleanly after each: "stale" copies come from after the
first), "B" the same way from other vectors, so both hold the same ids. The -wal and -shm files exist only while
a writer has the log open, so their cases start from a copy taken then (what kill -9 leaves behind). CASES is the
list of cases with the outcome each must have; the README's gallery section summarises it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from index.errors import CorruptGallery, GalleryError, MissingLog, ModelMismatch
from index.gallery import Gallery, Record
from tests.index.vectors import brute_force, clustered

MODEL, DIM = "corruption", 16
N1, N2 = 120, 60  # IVF4 trains at 4 * 39 = 156 vectors: during the second batch
REMOVED = list(range(3, 13))  # removed after the first batch's snapshot, so catching up must apply them
FACTORIES = {"Flat": {}, "IVF4,Flat": {"nprobe": 4}}  # nprobe = nlist: exact, so results compare exactly
K = 10


@dataclass
class Truth:
    """What was acknowledged: id -> (vector, record), and the queries' exact answers over them."""

    items: dict[int, tuple[np.ndarray, Record]]

    def top(self, xq: np.ndarray) -> list[list[int]]:
        ids = np.array(sorted(self.items), dtype=np.int64)
        xb = np.stack([self.items[i][0] for i in ids])
        _, found = brute_force(xb, ids, xq, min(K, len(ids)))
        return found.tolist()


def _records(seed: int, n: int) -> list[Record]:
    return [
        Record(
            person_id=f"person-{seed}-{i:04d}",
            camera_id=str(i % 3),
            captured_at=1_700_000_000.0 + i,
            track_id=f"t{i % 5}",
            metadata={"i": i, "seed": seed, "note": "\u00e9t\u00e9"},
        )
        for i in range(n)
    ]


@dataclass
class Built:
    final: Path  # closed after both batches and the removals
    stale: Path  # closed after the first batch
    crashed: Path  # copied while open after both batches: the log's tail is in the -wal file
    crashed_early: Path  # copied while open after the second batch's adds, before the removals
    crashed_snapshotted: Path  # copied while open after a snapshot of the final state (the -wal still holds it)
    truth: Truth
    truth_first: Truth  # after the first batch only
    ever: dict[int, tuple[np.ndarray, Record]]  # every item ever acknowledged (removed ones too)


def build(root: Path, seed: int, factory: str) -> Built:
    root.mkdir(parents=True)
    opts = FACTORIES[factory]
    xb = clustered(N1 + N2, DIM, seed=seed)
    records = _records(seed, N1 + N2)
    folder = root / "final"
    with Gallery.create(folder, model_id=MODEL, dim=DIM, factory=factory, **opts) as g:
        first = g.add(xb[:N1], records[:N1], model_id=MODEL)
    shutil.copytree(folder, root / "stale")
    with Gallery.open(folder, **opts) as g:
        second = g.add(xb[N1:], records[N1:], model_id=MODEL)
        shutil.copytree(folder, root / "crashed_early")
        assert g.remove(REMOVED) == len(REMOVED)
        shutil.copytree(folder, root / "crashed")
        assert (root / "crashed" / "gallery.sqlite-wal").stat().st_size > 0
        g.snapshot()
        shutil.copytree(folder, root / "crashed_snapshotted")
    ever = {gid: (xb[i], records[i]) for i, gid in enumerate(first + second)}
    first_items = {gid: ever[gid] for gid in first}
    final_items = {gid: v for gid, v in ever.items() if gid not in REMOVED}
    return Built(
        folder,
        root / "stale",
        root / "crashed",
        root / "crashed_early",
        root / "crashed_snapshotted",
        Truth(final_items),
        Truth(first_items),
        ever,
    )


@pytest.fixture(scope="module", params=list(FACTORIES))
def galleries(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param.replace(",", "_"))
    return request.param, build(root / "A", 1, request.param), build(root / "B", 2, request.param)


# -- what a gallery serves ------------------------------------------------------------------------------------


def same_record(got: Record, want: Record) -> bool:
    fields = ("person_id", "camera_id", "captured_at", "track_id", "metadata")
    return all(getattr(got, f) == getattr(want, f) for f in fields)


def check_serves(g: Gallery, truth: Truth, ever: dict) -> None:
    """Exactly ``truth``: the count, every record, no other acknowledged id, and exact top-k of sample queries."""
    assert len(g) == len(truth.items)
    for gid in ever:
        got = g.get(gid)
        if gid in truth.items:
            assert got is not None and same_record(got, truth.items[gid][1]), gid
        else:
            assert got is None, gid
    sample = sorted(truth.items)[:: max(1, len(truth.items) // 20)]
    xq = np.stack([truth.items[i][0] for i in sample])
    hits = g.search(xq, K, model_id=MODEL)
    assert [[h.id for h in row] for row in hits] == truth.top(xq)
    for gid, row in zip(sample, hits, strict=True):
        assert row[0].id == gid and row[0].score == pytest.approx(1.0, abs=1e-5)
        assert same_record(row[0].record, truth.items[gid][1])


def served_subset(g: Gallery, ever: dict) -> Truth:
    """What an opened gallery serves, checked item by item against what was acknowledged: every record it
    returns must be the acknowledged one; the result is the truth to search against."""
    items = {}
    for gid, (x, record) in ever.items():
        got = g.get(gid)
        if got is not None:
            assert same_record(got, record), gid
            items[gid] = (x, record)
    return Truth(items)


def outcome(folder: Path, check: Callable[[Gallery], None], opts: dict) -> str:
    """Open as the server does (writer) and check what it serves: "intact", "recovered" (intact after a rebuild
    or retraining it reports), "refused" (at open) or "refused at read" (a damaged row, when read)."""
    try:
        g = Gallery.open(folder, **opts)
    except CorruptGallery as exc:
        assert str(exc), "a refusal says why"
        return "refused"
    with g:
        try:
            check(g)
        except (CorruptGallery, ModelMismatch):  # a damaged row, or settings that no longer name this model
            return "refused at read"
        recovered = g.stats()["recovered"]
    if recovered:  # written back: the next open is clean and serves the same
        with Gallery.open(folder, **opts) as again:
            assert again.stats()["recovered"] == []
            check(again)
        return "recovered"
    return "intact"


# -- the damage -----------------------------------------------------------------------------------------------


def snapshot_of(folder: Path) -> Path:
    [f] = folder.glob("index.*.faiss")
    return f


def truncate(f: Path, keep: float = 0.5) -> None:
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])


def flip(f: Path, at: int | float) -> None:
    data = bytearray(f.read_bytes())
    i = at if isinstance(at, int) else int(len(data) * at)
    data[i] ^= 0x10
    f.write_bytes(bytes(data))


def flip_in_text(f: Path, text: bytes, offset: int = 0) -> None:
    data = f.read_bytes()
    at = data.find(text)
    assert at >= 0, text
    flip(f, at + offset)


def replace_with(f: Path, other: Path) -> None:
    f.unlink(missing_ok=True)
    shutil.copy2(other, f)


@dataclass(frozen=True)
class Case:
    file: str
    damage: str
    state: str  # "final" (closed), "crashed" or "crashed_snapshotted" (copied while open)
    apply: Callable[[Path, Built, Built], None]  # (folder, this gallery, the other gallery)
    expect: str  # intact | recovered | refused | refused at read | other gallery | earlier state
    factories: tuple[str, ...] = tuple(FACTORIES)


DB, WAL, SHM = "gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm"


def _vector_bytes(a: Built) -> bytes:
    return a.truth.items[100][0].tobytes()


def _without_snapshot(damage: Callable[[Path, Built, Built], None]) -> Callable[[Path, Built, Built], None]:
    def apply(folder: Path, a: Built, b: Built) -> None:
        damage(folder, a, b)
        snapshot_of(folder).unlink()  # so the index is rebuilt from the log, on the saved training if it verifies

    return apply


TRAINED_DAMAGE = {
    "missing": lambda f, a, b: (f / "trained.faiss").unlink(),
    "truncated to half": lambda f, a, b: truncate(f / "trained.faiss"),
    "bit-flipped": lambda f, a, b: flip(f / "trained.faiss", 0.6),
    "swapped with another gallery's": lambda f, a, b: replace_with(f / "trained.faiss", b.final / "trained.faiss"),
    "stale (an older copy)": lambda f, a, b: None,  # written once, when trained: an older copy is the same bytes
}

CASES = [
    # the log of record
    Case(DB, "missing", "final", lambda f, a, b: (f / DB).unlink(), "refused"),
    Case(DB, "truncated to 0", "final", lambda f, a, b: truncate(f / DB, 0), "refused"),
    Case(DB, "truncated to half", "final", lambda f, a, b: truncate(f / DB), "refused"),
    Case(DB, "header flipped", "final", lambda f, a, b: flip(f / DB, 16), "refused"),
    Case(DB, "b-tree page flipped", "final", lambda f, a, b: flip(f / DB, 4096 * 2), "refused"),
    Case(
        DB,
        "a record's text flipped",
        "final",
        lambda f, a, b: flip_in_text(f / DB, b"person-1-0100", 9),
        "refused at read",
    ),
    Case(
        DB,
        "a record's metadata flipped",
        "final",
        lambda f, a, b: flip_in_text(f / DB, b'"seed": 1', 8),
        "refused at read",
    ),
    # The snapshot holds its own copy of the vector: served right; the log's damaged copy is refused the next
    # time the log is read in full (test_a_flipped_vector_in_the_log_is_refused_by_a_rebuild).
    Case(DB, "a vector flipped", "final", lambda f, a, b: flip_in_text(f / DB, _vector_bytes(a), 5), "intact"),
    Case(DB, "the gallery id flipped", "final", lambda f, a, b: flip_in_text(f / DB, b"gallery_id", 14), "refused"),
    Case(
        DB,
        "swapped with another gallery's",
        "final",
        lambda f, a, b: replace_with(f / DB, b.final / DB),
        "other gallery",
    ),
    Case(DB, "stale (an older copy)", "final", lambda f, a, b: replace_with(f / DB, a.stale / DB), "refused"),
    # the log's write-ahead file and its index, as a kill -9 leaves them
    Case(WAL, "none (baseline after kill -9)", "crashed", lambda f, a, b: None, "intact"),
    # The transactions in a lost -wal are gone and nothing else records them, unless a snapshot written after
    # them says the log went further: then the log is refused as behind its snapshot.
    Case(WAL, "missing", "crashed", lambda f, a, b: (f / WAL).unlink(), "earlier state"),
    Case(WAL, "truncated to half", "crashed", lambda f, a, b: truncate(f / WAL), "earlier state"),
    Case(WAL, "bit-flipped", "crashed", lambda f, a, b: flip(f / WAL, 0.5), "earlier state"),
    Case(WAL, "missing, after a snapshot", "crashed_snapshotted", lambda f, a, b: (f / WAL).unlink(), "refused"),
    Case(WAL, "truncated, after a snapshot", "crashed_snapshotted", lambda f, a, b: truncate(f / WAL), "refused"),
    Case(WAL, "bit-flipped, after a snapshot", "crashed_snapshotted", lambda f, a, b: flip(f / WAL, 0.5), "refused"),
    Case(
        WAL,
        "swapped with another gallery's",
        "crashed",
        lambda f, a, b: replace_with(f / WAL, b.crashed / WAL),
        "refused",
    ),
    Case(
        WAL,
        "stale (an older copy)",
        "crashed",
        lambda f, a, b: replace_with(f / WAL, a.crashed_early / WAL),
        "earlier state",
    ),
    Case(SHM, "missing", "crashed", lambda f, a, b: (f / SHM).unlink(), "intact"),
    Case(SHM, "truncated to half", "crashed", lambda f, a, b: truncate(f / SHM), "intact"),
    Case(SHM, "bit-flipped", "crashed", lambda f, a, b: flip(f / SHM, 0.1), "intact"),
    Case(
        SHM,
        "swapped with another gallery's",
        "crashed",
        lambda f, a, b: replace_with(f / SHM, b.crashed / SHM),
        "intact",
    ),
    Case(
        SHM, "stale (an older copy)", "crashed", lambda f, a, b: replace_with(f / SHM, a.crashed_early / SHM), "intact"
    ),
    # the snapshot
    Case("index.NNNNNN.faiss", "missing", "final", lambda f, a, b: snapshot_of(f).unlink(), "recovered"),
    Case("index.NNNNNN.faiss", "truncated to half", "final", lambda f, a, b: truncate(snapshot_of(f)), "recovered"),
    Case("index.NNNNNN.faiss", "header flipped", "final", lambda f, a, b: flip(snapshot_of(f), 3), "recovered"),
    Case("index.NNNNNN.faiss", "payload flipped", "final", lambda f, a, b: flip(snapshot_of(f), 0.7), "recovered"),
    Case(
        "index.NNNNNN.faiss",
        "swapped with another gallery's",
        "final",
        lambda f, a, b: replace_with(snapshot_of(f), snapshot_of(b.final)),
        "recovered",
    ),
    Case(
        "index.NNNNNN.faiss",
        "stale (an older copy)",
        "final",
        lambda f, a, b: replace_with(snapshot_of(f), snapshot_of(a.stale)),
        "recovered",
    ),
    # the manifest
    Case("manifest.json", "missing", "final", lambda f, a, b: (f / "manifest.json").unlink(), "recovered"),
    Case("manifest.json", "truncated to half", "final", lambda f, a, b: truncate(f / "manifest.json"), "recovered"),
    Case("manifest.json", "bit-flipped", "final", lambda f, a, b: flip(f / "manifest.json", 0.5), "recovered"),
    Case(
        "manifest.json",
        "swapped with another gallery's",
        "final",
        lambda f, a, b: replace_with(f / "manifest.json", b.final / "manifest.json"),
        "recovered",
    ),
    Case(
        "manifest.json",
        "stale (an older copy)",
        "final",
        lambda f, a, b: replace_with(f / "manifest.json", a.stale / "manifest.json"),
        "recovered",
    ),
    # both together: a consistent snapshot, but of another gallery (same model, same ids) or of an older state
    Case(
        "manifest + snapshot",
        "swapped with another gallery's",
        "final",
        lambda f, a, b: _swap_snapshot(f, b.final),
        "recovered",
    ),
    Case("manifest + snapshot", "stale (an older copy)", "final", lambda f, a, b: _swap_snapshot(f, a.stale), "intact"),
    # the IVF training, read only when the index is rebuilt from the log: damaged alone it is never read, so each
    # case also deletes the snapshot and the rebuild must notice the damage and train again
    *[
        Case("trained.faiss (+ snapshot missing)", damage, "final", _without_snapshot(fn), "recovered", ("IVF4,Flat",))
        for damage, fn in TRAINED_DAMAGE.items()
    ],
    Case(
        "trained.faiss",
        "bit-flipped (snapshot intact)",
        "final",
        lambda f, a, b: flip(f / "trained.faiss", 0.6),
        "intact",
        ("IVF4,Flat",),
    ),
    # the writer's lock: only ever locked, never read
    Case("gallery.lock", "missing", "final", lambda f, a, b: (f / "gallery.lock").unlink(), "intact"),
    Case("gallery.lock", "garbage", "final", lambda f, a, b: (f / "gallery.lock").write_bytes(b"\xff" * 64), "intact"),
    Case(
        "gallery.lock",
        "swapped with another gallery's",
        "final",
        lambda f, a, b: replace_with(f / "gallery.lock", b.final / "gallery.lock"),
        "intact",
    ),
]


def _swap_snapshot(folder: Path, other: Path) -> None:
    snapshot_of(folder).unlink()
    replace_with(folder / snapshot_of(other).name, snapshot_of(other))
    replace_with(folder / "manifest.json", other / "manifest.json")


def _case_id(case: Case) -> str:
    return f"{case.file}: {case.damage}"


@pytest.mark.parametrize(
    ("galleries", "case"),
    [pytest.param(factory, case, id=f"{factory}-{_case_id(case)}") for factory in FACTORIES for case in CASES
     if factory in case.factories],
    indirect=["galleries"],
)  # fmt: skip
def test_damage_is_recovered_or_refused_never_served_wrong(galleries, case, tmp_path):
    factory, a, b = galleries
    folder = tmp_path / "gallery"
    shutil.copytree(getattr(a, case.state), folder)
    case.apply(folder, a, b)
    opts = FACTORIES[factory]

    if case.expect == "other gallery":  # the log is the record: the folder now is the other gallery, consistently
        assert outcome(folder, lambda g: check_serves(g, b.truth, b.ever), opts) == "recovered"
    elif case.expect == "earlier state":
        # A write-ahead file that lost its tail loses the transactions in it (SQLite replays the frames up to the
        # first that fails its checksum): what is served is an earlier state, right item by item, never a mix.
        def earlier(g: Gallery) -> None:
            served = served_subset(g, a.ever)
            assert set(a.truth_first.items) - set(REMOVED) <= set(served.items) <= set(a.ever)
            assert len(served.items) < len(a.ever) - len(REMOVED) or set(served.items) & set(REMOVED)
            check_serves(g, served, a.ever)

        assert outcome(folder, earlier, opts) in {"intact", "recovered"}
    else:
        assert outcome(folder, lambda g: check_serves(g, a.truth, a.ever), opts) == case.expect


@pytest.mark.parametrize("name", [DB, "index.NNNNNN.faiss", "manifest.json"])
def test_a_bit_flipped_anywhere_is_recovered_or_refused(galleries, name, tmp_path):
    """A sweep of single-byte flips over a whole file: each is recovered or refused, none served wrong."""
    factory, a, b = galleries
    source = snapshot_of(a.final) if name.startswith("index.") else a.final / name
    size = source.stat().st_size
    seen = set()
    flips = 32 if name == DB else 6  # the snapshot and the manifest are covered by sha256s, the log is not
    for n, at in enumerate(np.linspace(0, size - 1, flips).astype(int)):
        folder = tmp_path / f"g{n}"
        shutil.copytree(a.final, folder)
        target = snapshot_of(folder) if name.startswith("index.") else folder / name
        flip(target, int(at))
        seen.add(outcome(folder, lambda g: check_serves(g, a.truth, a.ever), FACTORIES[factory]))
    allowed = {"intact", "recovered", "refused", "refused at read"} if name == DB else {"recovered"}
    assert seen <= allowed


def test_a_flipped_vector_in_the_log_is_refused_by_a_rebuild(galleries, tmp_path):
    factory, a, _ = galleries
    folder = tmp_path / "gallery"
    shutil.copytree(a.final, folder)
    flip_in_text(folder / DB, _vector_bytes(a), 5)
    snapshot_of(folder).unlink()
    with pytest.raises(CorruptGallery, match="crc32"):
        Gallery.open(folder, **FACTORIES[factory])


def test_a_missing_log_starts_empty_only_when_the_operator_says_so(galleries, tmp_path):
    factory, a, _ = galleries
    folder = tmp_path / "gallery"
    shutil.copytree(a.final, folder)
    (folder / DB).unlink()
    for refuse in (
        lambda: Gallery.open(folder),
        lambda: Gallery.open_or_create(folder, model_id=MODEL, dim=DIM, factory=factory),
        lambda: Gallery.create(folder, model_id=MODEL, dim=DIM, factory=factory),
    ):
        with pytest.raises(MissingLog, match=r"gallery\.sqlite"):
            refuse()
    assert not (folder / DB).exists()
    opts = FACTORIES[factory]
    with Gallery.open_or_create(folder, model_id=MODEL, dim=DIM, factory=factory, allow_missing_log=True, **opts) as g:
        assert len(g) == 0 and any("missing" in r for r in g.stats()["recovered"])
        assert g.search(a.truth.items[100][0], 5, model_id=MODEL) == [[]]
    with Gallery.open(folder) as g:  # the old snapshot is gone for good
        assert len(g) == 0 and g.stats()["recovered"] == []


def test_an_empty_folder_or_a_gallery_that_never_held_items_is_created_without_asking(tmp_path):
    with Gallery.open_or_create(tmp_path / "new", model_id=MODEL, dim=DIM):
        pass
    (tmp_path / "new" / DB).unlink()
    with Gallery.open_or_create(tmp_path / "new", model_id=MODEL, dim=DIM) as g:
        assert len(g) == 0
    with pytest.raises(GalleryError, match="no gallery"):
        Gallery.open(tmp_path / "nothing")


# The log as versions before gallery ids and record crc32s wrote it.
LEGACY_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, person_id TEXT, camera_id TEXT, captured_at REAL, track_id TEXT,
    source TEXT, content_hash TEXT, metadata TEXT NOT NULL DEFAULT '{}', added_at REAL NOT NULL, vector BLOB NOT NULL,
    vector_crc INTEGER NOT NULL
);
CREATE INDEX items_content_hash ON items (content_hash);
CREATE TABLE removals (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL);
"""
LEGACY_ITEMS = (
    "id, person_id, camera_id, captured_at, track_id, source, content_hash, metadata, added_at, vector, vector_crc"
)


@pytest.mark.parametrize("upgraded", [False, True], ids=["as written", "columns added, no gallery id yet"])
def test_a_log_from_an_older_version_is_upgraded_and_a_reader_opened_before_follows(tmp_path, upgraded):
    """A log without a gallery id, record crc32s or removal crc32s (as older versions wrote it): a reader opened
    before the first writer still reads what that writer adds under the id it assigns; the snapshot is rebuilt
    once, bound to the log."""
    import sqlite3

    folder = tmp_path / "gallery"
    xb = clustered(30, DIM, seed=9)
    records = _records(9, 30)
    with Gallery.create(folder, model_id=MODEL, dim=DIM) as g:
        g.add(xb[:20], records[:20], model_id=MODEL)
        g.remove([4])
    (folder / DB).rename(folder / "new.sqlite")
    conn = sqlite3.connect(folder / DB)
    conn.executescript(LEGACY_SCHEMA)
    conn.execute("ATTACH DATABASE ? AS new", (str(folder / "new.sqlite"),))
    conn.execute("INSERT INTO meta SELECT * FROM new.meta WHERE key != 'gallery_id'")
    conn.execute(f"INSERT INTO items SELECT {LEGACY_ITEMS} FROM new.items")
    conn.execute("INSERT INTO removals SELECT seq, id FROM new.removals")
    if upgraded:  # a reader may open between a writer's upgrade of the columns and its gallery id
        conn.execute("ALTER TABLE items ADD COLUMN record_crc INTEGER")
    conn.execute(
        "UPDATE sqlite_sequence SET seq = (SELECT seq FROM new.sqlite_sequence s WHERE s.name = sqlite_sequence.name)"
    )
    conn.commit()
    conn.close()
    (folder / "new.sqlite").unlink()
    with Gallery.open(folder, readonly=True) as reader:
        assert reader.get(5).person_id == records[4].person_id and len(reader) == 19
        with Gallery.open(folder) as writer:
            assert writer.stats()["recovered"]  # the manifest is not bound to this log yet: rebuilt
            [new] = writer.add(xb[20:21], records[20:21], model_id=MODEL)
            reader.refresh()
            assert same_record(reader.get(new), records[20]) and same_record(reader.get(5), records[4])
            assert [h.id for h in reader.search(xb[20], 1, model_id=MODEL)[0]] == [new]
    with Gallery.open(folder) as again:
        assert again.stats()["recovered"] == [] and len(again) == 20
