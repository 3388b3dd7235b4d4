"""The gallery: faiss + SQLite on disk, filters and identity aggregation (no torch, no HTTP, no embedder)."""
