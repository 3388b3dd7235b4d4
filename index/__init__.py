"""The faiss gallery: vectors, metadata, durability, and bulk indexing of a folder (never imports torch)."""
