"""The gallery: the Gallery protocol with its embedded (faiss + SQLite) and Milvus backends, filters and identity
aggregation (no torch, no HTTP, no embedder). open_gallery(uri, ...) opens the backend a URI names."""

from index.backends import open_gallery, parse_uri
from index.protocol import Gallery

__all__ = ["Gallery", "open_gallery", "parse_uri"]
