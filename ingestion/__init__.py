"""Ingestion: folders, CSV manifests, data-set names, footage and kept crops -> the gallery, through the one write
pipeline (ingestion.pipeline: hash, de-duplicate, decode, embed, keep crops, add); threaded or on Ray; re-embedding.
The command lines are ingestion.cli's (``python -m ingestion.bulk``, ``python -m ingestion.reembed``).

It sits above the embedders and the gallery and joins them; neither of them knows about the other.
"""
