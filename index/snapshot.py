"""Atomic files and the manifest: a snapshot on disk is always a complete old or a complete new version.

Write: temp file in the same folder, fsync, rename over the target, fsync the folder (a plain
faiss.write_index tore the file in 19 of 25 kill -9 runs in the reliability probe; this in 0 of 25).
Read: sha256 of every snapshot file is in the manifest, and the manifest carries a checksum of its own
body, because faiss loads a flipped payload byte silently.

Bound to its log: the manifest names the gallery (the random id its log holds in ``meta``) and, for the log
position it covers, a digest of the (id, vector crc32) pairs then live. A snapshot and manifest copied from
another gallery, or a log that has changed underneath them, fail that check and the gallery is rebuilt
from its log.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 2: bound to the log (gallery_id, covers); older manifests are rebuilt


class SnapshotError(Exception):
    """A manifest or snapshot file that is missing, torn or corrupt (the gallery rebuilds from its log)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Manifest:
    model_id: str
    dim: int
    metric: str
    factory: str
    trained: bool  # False: the snapshot is the exact index served until the factory's index can be trained
    index_file: str
    counts: dict  # {"vectors": live rows, "ntotal": vectors in the faiss index, "tombstones": removed but present}
    checksums: dict  # {file name: sha256}
    watermark: dict  # {"last_id": ..., "last_removal_seq": ...}: the log rows this snapshot covers
    written_at: str
    gallery_id: str = ""  # the log's gallery id
    covers: str = ""  # sha256 of the (id, vector crc32) pairs live at the watermark (Store.covered_digest)
    index_choice: dict = field(default_factory=dict)  # factory "auto": what index.growth built and measured
    format: int = MANIFEST_FORMAT

    def to_bytes(self) -> bytes:
        body = asdict(self)
        return json.dumps({**body, "checksum": _body_checksum(body)}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            checksum = body.pop("checksum")
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise SnapshotError(f"manifest is not valid JSON with a checksum ({exc})") from None
        if checksum != _body_checksum(body):
            raise SnapshotError("manifest checksum mismatch (edited or corrupt)")
        try:
            manifest = cls(**body)
        except TypeError as exc:
            raise SnapshotError(f"manifest fields are wrong ({exc})") from None
        if manifest.format != MANIFEST_FORMAT:
            raise SnapshotError(f"manifest format {manifest.format} is not {MANIFEST_FORMAT} (an older version's)")
        return manifest


def _body_checksum(body: dict) -> str:
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def read_manifest(folder: Path) -> Manifest:
    try:
        data = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise SnapshotError("manifest.json is missing") from None
    return Manifest.from_bytes(data)


def read_verified(folder: Path, manifest: Manifest) -> bytes:
    """The snapshot file's bytes, after checking them against the manifest's sha256."""
    name = manifest.index_file
    if "/" in name or name.startswith("."):
        raise SnapshotError(f"manifest names an index file outside the gallery: {name!r}")
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {name} is missing") from None
    if sha256(data) != manifest.checksums.get(name):
        raise SnapshotError(f"snapshot {name} checksum mismatch (truncated or corrupt, {len(data)} bytes)")
    return data
