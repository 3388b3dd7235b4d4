"""The gallery's exceptions: one base class, so callers can catch every gallery failure at once."""


class GalleryError(Exception):
    """Any failure of the gallery (a bad argument, a corrupt or locked folder, a model mismatch)."""


class ModelMismatch(GalleryError):  # noqa: N818 (the shared contract's names)
    """Vectors or queries from another model_id or of another dimension than the gallery holds."""


class CorruptGallery(GalleryError):  # noqa: N818 (the shared contract's names)
    """The log of record (SQLite) is unreadable or inconsistent: refused, never served."""


class MissingLog(CorruptGallery):
    """The log of record is gone while the folder's snapshot or manifest says the gallery held items: refused,
    never opened empty, unless the operator asks for an empty log (``allow_missing_log``)."""


class GalleryLocked(GalleryError):  # noqa: N818 (the shared contract's names)
    """Another process holds the gallery's writer lock."""


class InvalidVector(GalleryError, ValueError):  # noqa: N818 (named like the contract's errors)
    """A vector with NaN or inf, zero norm, or the wrong shape."""


class GalleryUnavailable(GalleryError):  # noqa: N818 (named like the contract's errors)
    """The service holding the gallery cannot answer now (connection lost, server down, overloaded or timed out);
    nothing was changed by the failed call beyond what an interrupted write may leave. Worth retrying later."""
