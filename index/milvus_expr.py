"""Milvus' vocabulary, built from validated values only (no pymilvus here): the index type and build params of a
factory string, the search params of an index type, and the boolean expression of a SearchFilter.

Strings are checked and written as escaped literals, numbers as finite floats; nothing a caller sends is pasted
into an expression.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from index.records import SearchFilter

MAX_TEXT = 1024  # bytes of person, camera and track ids
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 64
HNSW_EF_CONSTRUCTION = 200
PASS_THROUGH = re.compile(r"([A-Z][A-Z0-9_]*)(?::(.*))?")


def milvus_index(factory: str, dim: int) -> tuple[str, dict]:
    """(Milvus index type, build params) for a faiss-style factory string or a Milvus index name."""
    if factory == "Flat":
        return "FLAT", {}
    if m := re.fullmatch(r"IVF(\d+),Flat", factory):
        return "IVF_FLAT", {"nlist": int(m.group(1))}
    if m := re.fullmatch(r"IVF(\d+),PQ(\d+)(?:x(\d+))?", factory):
        nlist, pq_m, nbits = int(m.group(1)), int(m.group(2)), int(m.group(3) or 8)
        if dim % pq_m:
            raise ValueError(f"factory {factory!r}: PQ{pq_m} does not divide the dimension {dim}")
        return "IVF_PQ", {"nlist": nlist, "m": pq_m, "nbits": nbits}
    if m := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", factory):
        return "HNSW", {"M": int(m.group(1)), "efConstruction": HNSW_EF_CONSTRUCTION}
    if m := PASS_THROUGH.fullmatch(factory):
        params = {}
        for item in filter(None, (m.group(2) or "").split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"index {factory!r}: parameters are key=value pairs separated by commas")
            params[key.strip()] = _number(value.strip())
        return m.group(1), params
    raise ValueError(
        f"unsupported index {factory!r}; use Flat, IVF<n>,Flat, IVF<n>,PQ<m>, HNSW<M> or a Milvus index type "
        "name (e.g. GPU_CAGRA:intermediate_graph_degree=64)"
    )


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def search_params(index_type: str, k: int, nprobe: int | None, ef_search: int | None) -> dict:
    if index_type.startswith("IVF") or index_type.startswith("GPU_IVF"):
        return {"nprobe": nprobe or DEFAULT_NPROBE}
    if index_type == "HNSW":
        return {"ef": max(k, ef_search or DEFAULT_EF_SEARCH)}
    return {}


# -- filters -> expressions -------------------------------------------------------------------------------------


def text_literal(value: object, what: str = "value") -> str:
    """A validated string as a Milvus string literal: quotes, backslashes and control characters escaped."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None
    if size > MAX_TEXT:
        raise ValueError(f"{what} is longer than {MAX_TEXT} bytes")
    return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are a subset of Milvus' (C-style)


def number_literal(value: float | str, what: str) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite")
    return repr(number)


def in_list(field: str, values: frozenset[str]) -> str:
    literals = ", ".join(text_literal(v, field) for v in sorted(values))
    return f"{field} in [{literals}]"


def filter_expression(filters: SearchFilter | None) -> str:
    """The Milvus boolean expression keeping exactly what SearchFilter.matches keeps ("" = everything)."""
    if filters is None or filters.is_empty:
        return ""
    parts = []
    for field, wanted in (("camera_id", filters.cameras), ("person_id", filters.person_ids)):
        if wanted is not None:
            parts.append(in_list(field, wanted) if wanted else "id < 0")  # an empty set keeps nothing
    if filters.exclude_cameras:  # records without a camera are kept, as in the embedded store
        parts.append(f"(camera_id is null or not ({in_list('camera_id', filters.exclude_cameras)}))")
    if filters.time_from is not None:
        parts.append(f"captured_at >= {number_literal(filters.time_from, 'time_from')}")
    if filters.time_to is not None:
        parts.append(f"captured_at <= {number_literal(filters.time_to, 'time_to')}")
    return " and ".join(parts)


def id_list(ids: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(i)) for i in ids) + "]"
