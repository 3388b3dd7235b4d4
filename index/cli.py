"""The index package's command lines: ``python -m index.calibrate`` and ``python -m index.copy`` (run by
``reid calibrate`` and ``reid gallery copy``). They parse arguments, call index.calibrate and index.copy, and print.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from index import calibrate, copy
from index.calibration import DEFAULT_TOP_K, TooFewIdentitiesError
from index.errors import GalleryError, GalleryLocked


def _summary(doc: str | None) -> str:
    return (doc or "").split("\n\n")[0]


def parse_calibrate_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m index.calibrate", description=_summary(calibrate.__doc__))
    p.add_argument("gallery", help="gallery folder, Milvus Lite .db file or milvus:// URI")
    p.add_argument(
        "--far",
        type=float,
        nargs="+",
        default=[0.01],
        help="identity-level false-alarm rates to calibrate (default 0.01, the server's default REID_TARGET_FAR)",
    )
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="hits aggregated per search (the server's)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, write nothing (opens read-only)")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    args = p.parse_args(argv)
    if any(not 0 < far < 1 for far in args.far):
        p.error("--far takes rates between 0 and 1")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    return args


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    args = parse_calibrate_args(argv)
    try:
        run = calibrate.calibrate_gallery(args.gallery, args.far, top_k=args.top_k, dry_run=args.dry_run)
    except GalleryLocked:
        print(
            f"index.calibrate: {args.gallery} is open for writing in another process (a running server?): stop it, "
            "calibrate, then start it again",
            file=sys.stderr,
        )
        return 1
    except TooFewIdentitiesError as exc:
        print(f"index.calibrate: refused: {exc}", file=sys.stderr)
        return 2
    except GalleryError as exc:
        print(f"index.calibrate: {exc}", file=sys.stderr)
        return 1
    result = run.calibration
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.gallery}: {result['gallery_identities']} labelled identities, {result['gallery_crops']} crops "
        f"({run.unlabelled} unlabelled); leave-one-identity-out, top {args.top_k}; "
        f"{run.absent_probes} absent-identity and {run.enrolled_probes} enrolled probes"
    )
    print(calibrate.format_table(result))
    if run.written:
        print(f"written to {args.gallery}: restart the server to use it (REID_TARGET_FAR picks the operating point)")
    else:
        print("dry run: nothing written")
    return 0


def copy_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m index.copy", description=_summary(copy.__doc__))
    p.add_argument("source", help="gallery folder, milvus://HOST:PORT/COLLECTION or a Milvus Lite .db file")
    p.add_argument("destination", help="the same forms; created if missing, resumed if a copy was interrupted")
    p.add_argument("--factory", help="index type of a new destination (default: the source's)")
    p.add_argument("--batch", type=int, default=copy.BATCH)
    p.add_argument("--sample", type=int, default=copy.SAMPLE, help="searches compared at the end")
    args = p.parse_args(argv)
    report = copy.copy_gallery(
        args.source,
        args.destination,
        factory=args.factory,
        batch=args.batch,
        sample=args.sample,
        progress=sys.stderr.isatty(),  # a bar for people; logs and pipes get the summary only
    )
    print(
        f"copied {report.copied}, already there {report.skipped}; items {report.source_count} -> "
        f"{report.destination_count}; {report.searches_checked} searches compared",
        file=sys.stderr,
    )
    for line in report.mismatches:
        print(f"mismatch: {line}", file=sys.stderr)
    return 0 if report.ok else 1
