"""Kept crops: the original bytes of gallery images, content-addressed by sha256, so a gallery can be rebuilt for
another model (``python -m ingestion.reembed``) and an item's image shown (``GET /v1/gallery/{id}/image``).

    <root>/ab/abcdef0123....jpg      the bytes as uploaded; the name is their sha256 and a suffix from their format

Names are built only from a validated 64-hex-digit hash, never from anything a client sent, and files are opened
without following symlinks. A write goes to a temporary file in the same folder, is fsynced and renamed into
place, so a reader sees a whole crop or none. The total size is capped: a put that would pass the cap raises
CropStoreFull before anything is written. The size is counted once, when the store is opened, and kept up to
date by this process; another process writing into the same folder is counted at its next open.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from index.errors import GalleryError
from index.uri import parse_uri

_HASH = re.compile(r"[0-9a-f]{64}")
# Magic bytes -> (file suffix, media type): the formats the decoder accepts (formats.images).
FORMATS = {
    "jpeg": (".jpg", "image/jpeg"),
    "png": (".png", "image/png"),
    "webp": (".webp", "image/webp"),
}
SUFFIXES = dict(FORMATS.values())  # ".jpg" -> "image/jpeg", ...
DEFAULT_MAX_BYTES = 10 * 1024**3


class CropStoreFull(GalleryError):  # noqa: N818 (named like the gallery's other errors)
    """Keeping these crops would pass the store's size cap; nothing was written."""


def sniff(data: bytes) -> str | None:
    """The image format by its first bytes: "jpeg", "png", "webp", or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crops_folder(gallery: str | os.PathLike, crops_dir: str | os.PathLike | None = None) -> Path | None:
    """Where a gallery's kept crops live: ``crops_dir`` when given, else <gallery folder>/crops; None for a Milvus
    gallery (server or Lite file) without ``crops_dir``, which has no folder of its own to put them in. The API
    (REID_CROPS_DIR) and bulk indexing (--crops-dir) both resolve it here, so they keep crops in the same place."""
    if crops_dir is not None:
        return Path(crops_dir)
    uri = parse_uri(gallery)
    if uri.kind != "embedded":
        return None
    assert uri.path is not None  # an embedded gallery is a folder
    return uri.path / "crops"


def check_hash(value: str) -> str:
    """A sha256 hex digest, or ValueError: the only thing a crop's file name is ever made from."""
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise ValueError("a crop is named by a sha256 hex digest (64 characters 0-9a-f)")
    return value


class CropStore:
    """Use CropStore.open(root, max_bytes); the constructor does no I/O."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._size = 0
        self._lock = threading.Lock()  # the size check and the rename happen together

    @classmethod
    def open(cls, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> CropStore:
        store = cls(Path(root), max_bytes)
        store.root.mkdir(parents=True, exist_ok=True)
        store._size = sum(path.stat().st_size for _, path in store._files())
        return store

    # -- reads ---------------------------------------------------------------------------------------------

    def path(self, digest: str) -> Path | None:
        """The kept file for a hash, or None."""
        folder = self.root / check_hash(digest)[:2]
        for suffix in SUFFIXES:
            candidate = folder / f"{digest}{suffix}"
            if candidate.is_file() and not candidate.is_symlink():
                return candidate
        return None

    def exists(self, digest: str) -> bool:
        return self.path(digest) is not None

    def get(self, digest: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of a kept crop, or None when it is not kept."""
        path = self.path(digest)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:  # removed since path() looked
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(), SUFFIXES[path.suffix]

    def size(self) -> int:
        """Bytes kept (as counted by this process)."""
        return self._size

    def __len__(self) -> int:
        return sum(1 for _ in self._files())

    def hashes(self) -> Iterator[str]:
        for digest, _ in self._files():
            yield digest

    def _files(self) -> Iterator[tuple[str, Path]]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if len(folder.name) != 2 or not folder.is_dir() or folder.is_symlink():
                continue
            for path in sorted(folder.iterdir()):
                digest = path.name[: -len(path.suffix)] if path.suffix else path.name
                if path.suffix in SUFFIXES and _HASH.fullmatch(digest) and path.is_file() and not path.is_symlink():
                    yield digest, path

    # -- writes --------------------------------------------------------------------------------------------

    def put(self, data: bytes) -> str:
        """Keep ``data`` (a JPEG, PNG or WEBP); returns its sha256. Keeping bytes already kept writes nothing."""
        return self.put_many([data])[0]

    def put_many(self, blobs: Iterable[bytes]) -> list[str]:
        """Keep every blob, or none: the cap is checked for all of them before the first is written."""
        blobs = list(blobs)
        items = []
        for data in blobs:
            fmt = sniff(data)
            if fmt is None:
                raise ValueError("only JPEG, PNG and WEBP bytes are kept")
            items.append((content_hash(data), FORMATS[fmt][0], data))
        with self._lock:
            todo = {digest: (suffix, data) for digest, suffix, data in items if not self.exists(digest)}
            needed = sum(len(data) for _, data in todo.values())
            if self._size + needed > self.max_bytes:
                raise CropStoreFull(
                    f"keeping {len(todo)} more crops ({needed} bytes) would pass the cap of {self.max_bytes} bytes "
                    f"({self._size} kept)"
                )
            for digest, (suffix, data) in todo.items():
                self._write(digest, suffix, data)
                self._size += len(data)
        return [digest for digest, _, _ in items]

    def copy_from(self, other: CropStore, digest: str) -> bool:
        """Keep the crop ``other`` holds under ``digest`` (a hard link when both are on one file system); returns
        False when ``other`` does not hold it. Within the cap like put."""
        source = other.path(digest)
        if source is None:
            return False
        with self._lock:
            if self.exists(digest):
                return True
            size = source.stat().st_size
            if self._size + size > self.max_bytes:
                raise CropStoreFull(f"keeping a {size}-byte crop would pass the cap of {self.max_bytes} bytes")
            target = self.root / digest[:2] / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except FileExistsError:
                return True
            except OSError:  # another file system, or links not allowed: copy the bytes
                data = other.get(digest)
                if data is None:
                    return False
                self._write(digest, source.suffix, data[0])
            self._size += size
        return True

    def remove(self, digest: str) -> bool:
        """Forget a crop (when no gallery item holds its hash any more); returns whether one was kept."""
        with self._lock:
            path = self.path(digest)
            if path is None:
                return False
            size = path.stat().st_size
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self._size -= size
            return True

    def _write(self, digest: str, suffix: str, data: bytes) -> None:
        folder = self.root / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / f"{digest}{suffix}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
