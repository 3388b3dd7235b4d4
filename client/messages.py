"""What the `reid` command line says when something goes wrong: one line, what went wrong and what to do. Pure
functions from an exception or a file to words (the CLI prints them), so each can be tested alone."""

from __future__ import annotations

import json
from pathlib import Path

from client.errors import ConnectionFailed, Forbidden, ReIDError, Unauthorized
from formats.names import JUNK_PERSON, person_and_camera

JUNK = "junk (person -1 in its name)"
KEY_HINT = "give an API key with --api-key or REID_API_KEY"
METADATA_EXAMPLE = '{"site": "gate 3"}'


class UsageError(Exception):
    """A request the CLI refuses before doing anything (a missing folder, a bad --metadata): exit status 2."""


def explain(exc: BaseException, url: str) -> str:
    """One line for a failure the user can fix."""
    if isinstance(exc, ConnectionFailed):
        return (
            f"cannot reach the API at {url} ({exc.message}); start it (reid serve) or give its address with --url "
            "or REID_URL"
        )
    if isinstance(exc, Unauthorized):
        return f"the API at {url} refused the call without a valid key ({exc.message}): {KEY_HINT}"
    if isinstance(exc, Forbidden):
        return f"this key may only read ({exc.message}): adding and removing need an admin key (--api-key)"
    if isinstance(exc, ReIDError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def parse_metadata(text: str | None) -> dict | None:
    """--metadata as a JSON object, or UsageError saying what was expected."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--metadata must be a JSON object such as '{METADATA_EXAMPLE}' ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"--metadata must be a JSON object such as '{METADATA_EXAMPLE}', not {type(value).__name__}")
    return value


def labels_of(path: Path, person: str | None, camera: str | None) -> tuple[str, str | None] | str:
    """(person, camera) for a crop: from its Market-1501 style name, else --person/--camera; or, for a file that
    is skipped, why."""
    parsed = person_and_camera(path.name)
    if parsed:
        if parsed[0] == JUNK_PERSON:
            return JUNK
        return parsed
    if person:
        return person, camera
    return "no person id: its name is not PPPP_cC... (Market-1501); give --person (and --camera) for such files"


def existing(path: Path, what: str) -> Path:
    """``path`` when it exists, else UsageError naming it."""
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    return path


def gallery_location(text: str, what: str) -> str:
    """A gallery folder or Milvus Lite file must exist; a milvus:// URI is the server's to answer."""
    if "://" not in text:
        existing(Path(text), what)
    return text


def artifact(path: Path) -> Path:
    """An exported model folder: it holds model.onnx."""
    existing(path, "the model folder (--artifact)")
    if not (path / "model.onnx").is_file():
        raise UsageError(f"no model at {path / 'model.onnx'}: --artifact names a folder written by python -m export")
    return path
