"""The formats every stage shares: the model spec, image decoding, crop file names.

The leaf of the package graph: it imports no other stage, nor torch, FastAPI or faiss, so training, export,
the embedders, the gallery, ingestion, the server and the client can all read the same contracts.
"""
