"""Every benchmark of the project, one module per subject, each run as ``python -m benchmarks.<name>``.

models (eager / ONNX Runtime fp32 / INT8 / TensorRT per batch), embedders (the Embedder backends per concurrency),
gallery (index types, and the gallery backends serving), bulk (folder indexing throughput), http (the API end to
end) and report (one table and the plots from their JSON). ``make bench`` runs them all. This package may import
every stage; no stage imports it (an import contract says so). It is not installed with the project: run it from
a checkout.
"""
