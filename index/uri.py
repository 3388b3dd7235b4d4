"""Where a gallery lives: a URI names its backend (REID_GALLERY_URI), parsed here and nowhere else.

    galleries/site-a                       a folder: the embedded faiss + SQLite store (the default)
    milvus://HOST:PORT/COLLECTION          a Milvus server (user:password@ in front of HOST for a secured one)
    galleries/site-a.db                    Milvus Lite: the Milvus API embedded in this process, data in that path

index.backends opens what a URI names and index.milvus connects to it; both import this module, which imports
neither, so neither imports the other's caller.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_COLLECTION = "gallery"  # the collection of a Milvus Lite file
# Seconds each call to a Milvus server may take (None: pymilvus' own behaviour, no deadline). Here, not in
# index.milvus, so that open_gallery can name its default without importing pymilvus.
DEFAULT_MILVUS_TIMEOUT_S = 10.0
COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # Milvus' rule for collection names


@dataclass(frozen=True)
class GalleryURI:
    kind: str  # "embedded" | "milvus" | "milvus-lite"
    path: Path | None = None  # embedded folder or Milvus Lite file
    address: str | None = None  # http://HOST:PORT of a Milvus server
    collection: str = DEFAULT_COLLECTION
    token: str | None = None  # "user:password" of a secured Milvus server

    def __str__(self) -> str:
        """The URI without credentials (for logs and stats)."""
        if self.kind == "milvus":
            return f"milvus://{(self.address or '').removeprefix('http://')}/{self.collection}"
        return str(self.path)

    def client_uri(self) -> str:
        """What pymilvus connects to: a Milvus Lite file (its folder made) or a server's address."""
        if self.kind == "milvus-lite":
            assert self.path is not None  # a Lite gallery is a file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return str(self.path.resolve())
        assert self.address is not None  # a milvus:// URI names its server
        return self.address


def parse_uri(uri: str | os.PathLike, *, collection: str | None = None) -> GalleryURI:
    """Which backend a URI names. ``collection`` overrides the collection of a Milvus Lite file."""
    text = os.fspath(uri)
    if not text:
        raise ValueError("the gallery URI is empty")
    if text.startswith("milvus://"):
        parts = urlsplit(text)
        if not parts.hostname or parts.port is None:
            raise ValueError(f"{_redacted(text)}: a Milvus URI is milvus://HOST:PORT/COLLECTION")
        name = collection or parts.path.strip("/")
        _check_collection(name, text)
        token = None
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return GalleryURI("milvus", address=f"http://{host}:{parts.port}", collection=name, token=token)
    if "://" in text:
        raise ValueError(f"{_redacted(text)}: unknown gallery URI scheme (use a folder, milvus://... or a .db file)")
    if text.endswith(".db"):
        name = collection or DEFAULT_COLLECTION
        _check_collection(name, text)
        return GalleryURI("milvus-lite", path=Path(text), collection=name)
    return GalleryURI("embedded", path=Path(text))


def _check_collection(name: str, uri: str) -> None:
    if not COLLECTION_NAME.fullmatch(name or ""):
        raise ValueError(f"{_redacted(uri)}: {name!r} is not a Milvus collection name (letters, digits, _)")


def _redacted(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri)
