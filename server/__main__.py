"""``python -m server``: the API under uvicorn with the deadlines and limits of its settings (REID_*).

The one way the server is launched (make serve, reid serve, the server image), so the request-head, body and
keep-alive deadlines and the per-client connection limit are the same everywhere: uvicorn_config builds them from
server/settings.py.
"""

from __future__ import annotations

import argparse

import uvicorn

from server.main import create_app, uvicorn_config
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    settings = Settings()
    config = uvicorn_config(settings, create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
