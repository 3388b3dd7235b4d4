"""Ingestion: folders, CSV manifests and data-set names -> decode -> embed -> the gallery, threaded or on Ray.

It sits above the embedders and the gallery and joins them; neither of them knows about the other.
"""
