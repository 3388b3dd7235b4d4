"""Two decisions the request path makes about the served model and its gallery.

* ``variant_problem``: whether the artifact can serve the variant REID_MODEL_VARIANT names, before start-up.
* ``gallery_refusal``: whether the served variant of the model (embedders.variants) may search and add to the
  gallery it opened. The gallery records no variant yet, so one that holds items counts as built by fp32, the only
  variant served before variants were recorded (embedders.variants.recorded_or_fp32).
* ``searches_inline``: whether a gallery search is cheap enough to run on the event loop rather than hop to a
  search thread. An exact (Flat) index of the embedded store scanning at most ``INLINE_SEARCH_FLOATS`` floats
  takes well under a millisecond (a 2M-float scan is 8 MB, about 0.3 ms on one core at the 28 GB/s measured
  here for faiss flat), less than the hop's tail on a busy host (a Flat 500 x 512 gallery on this 2-core machine under load: search
  0.35 ms inline, the thread hop adding 0.11 ms at the median and 3 ms at p90); an IVF or re-ranked index reads the log (SQLite) and
  a Milvus gallery answers over the network, so those always take a thread.
"""

from __future__ import annotations

from pathlib import Path

from embedders.onnx import OnnxEmbedder
from embedders.protocol import EmbedderError
from embedders.variants import VariantRefused, check_gallery, recorded_or_fp32
from formats.spec import ModelSpec
from index import Gallery
from index.gallery import Gallery as EmbeddedGallery

INLINE_SEARCH_FLOATS = 2_000_000  # items x dim: 3.9k x 512 or 976 x 2048


def gallery_refusal(spec: ModelSpec, variant: str, gallery: Gallery) -> str:
    """ "" when ``variant`` may serve ``gallery``, else why not and which setting to change."""
    try:
        check_gallery(spec, variant, recorded_or_fp32(None, len(gallery)))
    except VariantRefused as exc:
        return str(exc)
    return ""


def variant_problem(artifact: Path, requested: str | None) -> str:
    """Why the ONNX Runtime embedder would refuse to serve the artifact's ``requested`` variant (or its default),
    checked before the server starts, from the artifact's spec.json; "" when it would serve one."""
    embedder = OnnxEmbedder(artifact=artifact, variant=requested)
    try:
        embedder.choose()
    except EmbedderError as exc:
        return str(exc)
    return ""


def searches_inline(gallery: Gallery, max_floats: float) -> bool:
    """Whether a search of ``gallery`` is cheap enough to run where it is called (see the module's docstring)."""
    return (
        isinstance(gallery, EmbeddedGallery) and gallery.factory == "Flat" and len(gallery) * gallery.dim <= max_floats
    )
