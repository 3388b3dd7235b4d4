"""Checkpoint -> ONNX / TensorRT artifact, the model spec and the Triton model repository.

Importing this package is cheap: torch is imported only by the modules that export.
"""
