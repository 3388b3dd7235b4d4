"""One setting picks the gallery backend: a URI (REID_GALLERY_URI), read here and nowhere else.

    galleries/site-a                       a folder: the embedded faiss + SQLite store (the default)
    milvus://HOST:PORT/COLLECTION          a Milvus server (user:password@ in front of HOST for a secured one)
    galleries/site-a.db                    Milvus Lite: the Milvus API embedded in this process, data in that path

open_gallery opens (or creates, given model_id and dim) the gallery a URI names; the Milvus client is imported
only when a Milvus URI is opened, so the embedded store needs no Milvus packages.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from index.errors import GalleryError
from index.protocol import Gallery

DEFAULT_COLLECTION = "gallery"  # the collection of a Milvus Lite file
EMBEDDED_ONLY = frozenset({"threads", "gpu", "snapshot_every"})  # ignored by Milvus
MILVUS_ONLY = frozenset({"timeout"})  # ignored by the embedded store, whose calls never leave the process
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
            return f"milvus://{self.address.removeprefix('http://')}/{self.collection}"
        return str(self.path)


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


def open_gallery(
    uri: str | os.PathLike | GalleryURI,
    *,
    model_id: str | None = None,
    dim: int | None = None,
    factory: str = "Flat",
    readonly: bool = False,
    collection: str | None = None,
    **options,
) -> Gallery:
    """The gallery at ``uri``: created with ``factory`` when model_id and dim are given and it does not exist yet,
    refused with ModelMismatch when it holds another model or dim. Without model_id and dim it must exist.

    Options: nprobe, ef_search and allow_missing_log (both backends: start empty where the gallery's store of
    record is gone while there is evidence it held items); threads, gpu and snapshot_every (the embedded store's;
    a Milvus gallery ignores them); timeout (Milvus': seconds each call to the server may take before it fails
    with GalleryUnavailable, index.milvus.DEFAULT_TIMEOUT_S when not given; None waits as long as pymilvus does;
    the embedded store ignores it).
    """
    target = uri if isinstance(uri, GalleryURI) else parse_uri(uri, collection=collection)
    if (model_id is None) != (dim is None):
        raise ValueError("give both model_id and dim, or neither")
    if target.kind == "embedded":
        from index.gallery import Gallery as EmbeddedGallery

        for name in MILVUS_ONLY:
            options.pop(name, None)

        if model_id is None or readonly:
            options.pop("allow_missing_log", None)  # only creating a gallery can start an empty log
            gallery = EmbeddedGallery.open(target.path, readonly=readonly, **options)
            if model_id is not None:
                try:
                    gallery.check_compatible(model_id, dim)
                except BaseException:
                    gallery.close()
                    raise
            return gallery
        return EmbeddedGallery.open_or_create(target.path, model_id=model_id, dim=dim, factory=factory, **options)
    unknown = set(options) - {"nprobe", "ef_search", "allow_missing_log"} - EMBEDDED_ONLY - MILVUS_ONLY
    if unknown:
        raise TypeError(f"unknown gallery options {sorted(unknown)}")
    try:
        from index.milvus import DEFAULT_TIMEOUT_S, MilvusGallery
    except ImportError as exc:  # pymilvus is in the server extra, Milvus Lite in the milvus extra
        raise GalleryError(f"{target} needs pymilvus: pip install 'apnet-reid[server]' ({exc})") from exc
    return MilvusGallery.open(
        target,
        model_id=model_id,
        dim=dim,
        factory=factory,
        nprobe=options.get("nprobe"),
        ef_search=options.get("ef_search"),
        allow_missing_log=bool(options.get("allow_missing_log")) and model_id is not None and not readonly,
        timeout=options.get("timeout", DEFAULT_TIMEOUT_S),
    )
