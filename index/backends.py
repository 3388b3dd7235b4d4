"""One setting picks the gallery backend: a URI (REID_GALLERY_URI, parsed by index.uri); open_gallery opens it.

open_gallery opens (or creates, given model_id and dim) the gallery a URI names. Each backend is imported only
when a URI names it: the embedded store needs faiss, Milvus needs pymilvus, and an install without them (the
training side imports index.calibration) must still import this package.
"""

from __future__ import annotations

import os

from index.errors import GalleryError
from index.protocol import Gallery
from index.uri import DEFAULT_COLLECTION, DEFAULT_MILVUS_TIMEOUT_S, GalleryURI, parse_uri

__all__ = ["DEFAULT_COLLECTION", "GalleryURI", "open_gallery", "parse_uri"]


def open_gallery(
    uri: str | os.PathLike | GalleryURI,
    *,
    model_id: str | None = None,
    dim: int | None = None,
    factory: str = "Flat",
    readonly: bool = False,
    collection: str | None = None,
    allow_missing_log: bool = False,
    nprobe: int | None = None,
    ef_search: int | None = None,
    threads: int | None = None,
    gpu: bool = False,
    snapshot_every: int | None = None,
    timeout: float | None = DEFAULT_MILVUS_TIMEOUT_S,
) -> Gallery:
    """The gallery at ``uri``: created with ``factory`` when model_id and dim are given and it does not exist yet,
    refused with ModelMismatch when it holds another model or dim. Without model_id and dim it must exist.

    Both backends: nprobe, ef_search, and allow_missing_log (start empty where the gallery's store of record is
    gone while there is evidence it held items; only when creating, never read-only).
    The embedded store only: threads (search threads for large batches), gpu, snapshot_every (mutations between
    snapshots; the store's default when None). A Milvus gallery does not use them.
    Milvus only: timeout (seconds each call to the server may take before it fails with GalleryUnavailable;
    None waits as long as pymilvus does). The embedded store's calls never leave the process.
    """
    target = uri if isinstance(uri, GalleryURI) else parse_uri(uri, collection=collection)
    if (model_id is None) != (dim is None):
        raise ValueError("give both model_id and dim, or neither")
    creating = model_id is not None and not readonly
    if target.kind == "embedded":
        from index.gallery import Gallery as EmbeddedGallery  # faiss: see the module's docstring

        assert target.path is not None  # an embedded gallery is a folder

        if not creating:
            gallery = EmbeddedGallery.open(
                target.path,
                readonly=readonly,
                nprobe=nprobe,
                ef_search=ef_search,
                threads=threads,
                gpu=gpu,
                snapshot_every=snapshot_every,
            )
            if model_id is not None:
                try:
                    gallery.check_compatible(model_id, dim)
                except BaseException:
                    gallery.close()
                    raise
            return gallery
        assert model_id is not None and dim is not None  # creating: both given (checked above)
        return EmbeddedGallery.open_or_create(
            target.path,
            model_id=model_id,
            dim=dim,
            factory=factory,
            allow_missing_log=allow_missing_log,
            nprobe=nprobe,
            ef_search=ef_search,
            threads=threads,
            gpu=gpu,
            snapshot_every=snapshot_every,
        )
    try:
        from index.milvus import MilvusGallery  # pymilvus: see the module's docstring
    except ImportError as exc:  # pymilvus is in the server extra, Milvus Lite in the milvus extra
        raise GalleryError(f"{target} needs pymilvus: pip install 'apnet-reid[server]' ({exc})") from exc
    return MilvusGallery.open(
        target,
        model_id=model_id,
        dim=dim,
        factory=factory,
        nprobe=nprobe,
        ef_search=ef_search,
        allow_missing_log=allow_missing_log and creating,
        timeout=timeout,
    )
