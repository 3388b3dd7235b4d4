"""python -m ingestion.track_dataset --gallery DIR|URI --out DIR [--time-from ISO] [--time-to ISO] [--crops-dir DIR]

Write a gallery's tracked items of a time window, with their kept crops, as a folder that ``python -m
training.adapt`` reads (see ingestion.track_dataset). Exit status: 0 written; 2 refused (no kept crops, a gallery
that cannot be opened, an output folder that is not empty).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from index.errors import GalleryError
from ingestion.track_dataset import export_tracks


def iso_seconds(text: str) -> float:
    """ISO-8601 -> Unix seconds (a time without a zone is UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r} (e.g. 2026-12-07T14:02:00+01:00)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ingestion.track_dataset", description=__doc__.split("\n\n")[1])
    p.add_argument("--gallery", required=True, help="gallery folder, Milvus Lite .db file or milvus://HOST:PORT/NAME")
    p.add_argument("--out", required=True, type=Path, help="output folder (absent or empty)")
    p.add_argument("--time-from", type=iso_seconds, help="first capture time kept (ISO-8601)")
    p.add_argument("--time-to", type=iso_seconds, help="last capture time kept (ISO-8601)")
    p.add_argument("--crops-dir", type=Path, help="the gallery's crop store (default: <gallery>/crops)")
    args = p.parse_args(argv)
    if args.time_from is not None and args.time_to is not None and args.time_to < args.time_from:
        p.error("--time-to is before --time-from")
    try:
        summary = export_tracks(
            args.gallery, args.out, time_from=args.time_from, time_to=args.time_to, crops_dir=args.crops_dir
        )
    except (GalleryError, FileExistsError, FileNotFoundError) as exc:
        print(f"ingestion.track_dataset: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
