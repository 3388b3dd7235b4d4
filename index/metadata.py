"""A record's free-form metadata: a JSON object, checked when written and again when read.

Writes go through ``encode``: it refuses what would not read back as the same JSON (NaN or infinity, strings
that are not valid Unicode, keys that are not strings, nesting deeper than MAX_DEPTH) before anything is
stored. Reads go through ``decode``, which never raises: a stored value that does not parse or fails the same
check (written by an older version, or damaged) comes back as ``{"_unreadable": reason}``, so one bad row can
fail neither a get nor a search. ``check`` with tighter ``Limits`` is what a server applies at its door.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

UNREADABLE = "_unreadable"  # the only key of the stand-in for metadata that cannot be served
# Hard ceiling on nesting: answers nest metadata a few levels deep in their own JSON, and pydantic refuses to
# serialise anything nested deeper than 255 levels (the 500 a few hundred levels of metadata caused).
MAX_DEPTH = 64
INT64 = (-(2**63), 2**63 - 1)


class MetadataError(ValueError):
    """Metadata that may not be stored; the message says which bound it breaks, never its content."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one metadata object. None means unbounded; depth counts nested objects and arrays (a flat
    object is 1); items counts keys and array elements at every level; size is the compact JSON in UTF-8."""

    max_depth: int = MAX_DEPTH
    max_items: int | None = None
    max_key_chars: int | None = None
    max_value_chars: int | None = None
    max_bytes: int | None = None
    int64: bool = False  # integers must fit in a signed 64-bit integer (what most clients can read back)


STORABLE = Limits()  # what every stored value must meet to be served


def check(value: object, limits: Limits = STORABLE) -> None:
    """MetadataError unless ``value`` is a JSON object within ``limits`` that reads back unchanged."""
    if not isinstance(value, dict):
        raise MetadataError("metadata must be a JSON object")
    items = 0
    stack: list[tuple[object, int]] = [(value, 1)]  # iterative: a deep value must not blow Python's stack
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            items += len(node)
            stack.extend((child, depth + 1) for child in _children(node, depth, items, limits))
        else:
            _check_scalar(node, limits)
    if limits.max_bytes is not None:
        size = len(_dumps(value).encode("utf-8"))
        if size > limits.max_bytes:
            raise MetadataError(f"metadata is {size} bytes as JSON; at most {limits.max_bytes}")


def _children(node: dict | list | tuple, depth: int, items: int, limits: Limits) -> Iterable[object]:
    """The values of an object or array at ``depth`` (``items``: keys and array items so far, this one's included),
    once its depth, the count and its keys are within ``limits``."""
    if depth > limits.max_depth:
        raise MetadataError(f"metadata nests deeper than {limits.max_depth} levels")
    if limits.max_items is not None and items > limits.max_items:
        raise MetadataError(f"metadata has more than {limits.max_items} keys and array items")
    if not isinstance(node, dict):
        return node
    for key in node:
        if not isinstance(key, str):
            raise MetadataError("metadata keys must be strings")
        _check_text(key, limits.max_key_chars, "a key")
    return node.values()


def _check_scalar(node: object, limits: Limits) -> None:
    if isinstance(node, str):
        _check_text(node, limits.max_value_chars, "a string value")
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        if limits.int64 and not INT64[0] <= node <= INT64[1]:
            raise MetadataError("metadata integers must fit in 64 bits")
    elif isinstance(node, float):
        if not math.isfinite(node):
            raise MetadataError("metadata numbers must be finite (no NaN or infinity)")
    else:
        raise MetadataError(f"metadata values must be JSON (not {type(node).__name__})")


def _check_text(text: str, max_chars: int | None, what: str) -> None:
    if max_chars is not None and len(text) > max_chars:
        raise MetadataError(f"{what} in metadata is longer than {max_chars} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"{what} in metadata is not valid Unicode (a lone surrogate)") from None


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(value: dict | None) -> str:
    """The stored text of ``value`` (None is an empty object); MetadataError if it could not be served back."""
    value = {} if value is None else value
    check(value)
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except ValueError as exc:  # an integer too long for Python's int-to-text conversion
        raise MetadataError(f"metadata cannot be written as JSON ({exc})") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def decode(stored: object) -> tuple[dict, str | None]:
    """(metadata, None) for a readable stored value, ({"_unreadable": reason}, reason) for anything else."""
    if stored is None or stored in ("", b""):
        return {}, None
    if isinstance(stored, bytes):
        try:
            stored = stored.decode("utf-8")
        except UnicodeDecodeError:
            return _unreadable("the stored metadata is not UTF-8 text")
    if not isinstance(stored, str):
        return _unreadable(f"the stored metadata is a {type(stored).__name__}, not JSON text")
    try:
        value = json.loads(stored, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return _unreadable("the stored metadata is not valid JSON")
    try:
        check(value)
    except MetadataError as exc:
        return _unreadable(f"the stored metadata cannot be served: {exc}")
    return value, None


def _unreadable(reason: str) -> tuple[dict, str]:
    return {UNREADABLE: reason}, reason
