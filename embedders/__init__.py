"""Embedders: uint8 person crops in, L2-normalised embeddings out, from ONNX Runtime in-process or a Triton
Inference Server. The server and bulk ingestion both embed through them; they know nothing of HTTP or galleries.
"""
