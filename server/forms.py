"""Form field types the routes share, each with the schema that documents it and the validation that enforces it:
lists sent by repeating a field or as comma-separated values, and times as Unix seconds or ISO 8601."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, StringConstraints, WithJsonSchema

TIME_FORMS = "Unix seconds (1700000000 or 1700000000.5) or ISO 8601 (2023-11-14T22:13:20Z; without a zone, UTC)"
LIST_FORMS = "repeat the field (cameras=1, cameras=2) or separate values with commas (cameras=1,2)"
MAX_FILTER_VALUES = 100


def unix_seconds(value: object) -> float:
    """Unix seconds from a number or its text, or from an ISO 8601 date and time (UTC when it names no zone)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_time(value.strip())
    else:
        raise ValueError(f"expected {TIME_FORMS}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite time: {TIME_FORMS}")
    return seconds


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lower-case t and z
    except ValueError:
        raise ValueError(f"expected {TIME_FORMS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def split_values(values: list[str] | None) -> list[str] | None:
    """Each value split at commas, blanks dropped, order kept, repeats once; None when nothing is left (no filter)."""
    if values is None:
        return None
    out: dict[str, None] = {}
    for value in values:
        for part in value.split(","):
            if part := part.strip():
                out[part] = None
    if len(out) > MAX_FILTER_VALUES:
        raise ValueError(f"at most {MAX_FILTER_VALUES} values")
    return list(out) or None


_TIME_SCHEMA = {
    "anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
    "description": TIME_FORMS,
}

Timestamp = Annotated[float, BeforeValidator(unix_seconds), WithJsonSchema(_TIME_SCHEMA)]
"""A time: Unix seconds or ISO 8601, as Unix seconds."""

ValueList = Annotated[list[str], AfterValidator(split_values)]
"""Ids sent as repeated fields or comma-separated, None when none is left; routes give it the default None (not a
nullable type: a multipart form has no null, so the schema must not promise one)."""

NonEmpty = Annotated[str, StringConstraints(min_length=1)]

JsonObjectText = Annotated[
    str, WithJsonSchema({"type": "object", "description": "a JSON object (sent as its JSON text)"})
]
"""A JSON object sent as a form field's text: documented as an object, which multipart sends as JSON."""
