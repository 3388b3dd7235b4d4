"""``python -m server``: the API under uvicorn with the deadlines and limits of its settings (REID_*).

The one way the server is launched (make serve, reid serve, the server image), so the request-head, body and
keep-alive deadlines and the per-client connection limit are the same everywhere: uvicorn_config builds them from
server/settings.py.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from server.main import create_app, uvicorn_config
from server.settings import Settings
from server.startup import describe, startup_problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--create-gallery",
        action="store_true",
        help="start a new, empty gallery where REID_GALLERY_DIR names none (REID_CREATE_GALLERY=true); without it a "
        "missing gallery is refused",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings(create_gallery=True) if args.create_gallery else Settings()
    except (ValidationError, ValueError) as exc:
        print(f"python -m server: bad REID_* settings: {_first_error(exc)}", file=sys.stderr)
        return 2
    if problems := startup_problems(settings):
        for problem in problems:
            print(f"python -m server: {problem}", file=sys.stderr)
        return 2
    print(describe(settings, f"http://{args.host}:{args.port}"), file=sys.stderr, flush=True)
    config = uvicorn_config(settings, create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    uvicorn.Server(config).run()
    return 0


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return f"REID_{where.upper()}: {err.get('msg')}" if where else str(err.get("msg"))
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
