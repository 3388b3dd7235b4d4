"""The embedders' command line: ``python -m embedders.local_triton`` (run by ``make triton`` and ``reid serve
--triton``). It parses arguments and calls embedders.local_triton.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from embedders import local_triton


def local_triton_main(argv: Sequence[str] | None = None) -> int:
    summary = (local_triton.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m embedders.local_triton", description=summary)
    parser.add_argument("--artifact", required=True, type=Path, help="artifact folder with model_repository/")
    # Triton's usual 8000-8002 shifted by 10: `make serve` puts the API on 8000.
    parser.add_argument("--http-port", type=int, default=8010)
    parser.add_argument("--grpc-port", type=int, default=8011)
    parser.add_argument("--metrics-port", type=int, default=8012)
    parser.add_argument("--log-file", type=Path, default=None, help="tritonserver log (default runs/triton/NAME.log)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # A plain flag, not a threading.Event: the handler runs on the main thread, possibly while Event.wait holds the
    # Event's lock, and Event.set would then wait on that lock forever.
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    log_file = args.log_file or Path("runs/triton") / f"{args.artifact.name}.log"
    ports = (args.http_port, args.grpc_port, args.metrics_port)
    with local_triton.LocalTriton(args.artifact, *ports, log_file=log_file) as triton:
        return local_triton.serve_until_stopped(triton, stopping, log_file)
