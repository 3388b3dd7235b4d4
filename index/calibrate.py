"""Calibrate the search verdict on a gallery's own people, and store it in the gallery.

    python -m index.calibrate GALLERY [--far 0.01 0.1] [--top-k 10] [--dry-run] [--json]     (reid calibrate)

GALLERY is what REID_GALLERY_DIR names: a folder (embedded store), a Milvus Lite ``.db`` file or a
``milvus://`` URI. Leave-one-identity-out over the gallery's labelled crops (index.calibration): each person's
crops are absent-identity probes against everyone else and enrolled probes against the gallery less that crop.
The server prefers this calibration to the artifact's; it reads it when it opens the gallery, so restart it
afterwards (a running server also holds an embedded gallery's writer lock: stop it first).

Refused (exit 2, nothing written) when the gallery has fewer labelled identities than a requested FAR needs:
ceil(3 / FAR), so 30 for 0.1, 300 for 0.01 (index.calibration says why).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from index.backends import open_gallery
from index.calibration import (
    DEFAULT_TOP_K,
    TooFewIdentitiesError,
    calibration,
    check_estimable,
    leave_one_identity_out,
)
from index.errors import GalleryError, GalleryLocked
from index.protocol import Gallery

SCAN_ROWS = 4096


def read_labels(gallery: Gallery) -> tuple[np.ndarray, list[str | None]]:
    """Every vector of the gallery with its person id (None when unlabelled), in id order."""
    chunks, labels = [], []
    after = 0
    while True:
        ids, xb, records = gallery.scan(after, SCAN_ROWS)
        if len(ids) == 0:
            break
        chunks.append(xb)
        labels += [r.person_id for r in records]
        after = int(ids[-1])
    xb = np.concatenate(chunks) if chunks else np.zeros((0, gallery.dim), np.float32)
    return xb, labels


def format_table(cal: dict) -> str:
    lines = [f"  {'target FAR':>10}  {'threshold':>9}  {'DIR':>6}  {'measured FAR':>12}  {'absent ids':>10}"]
    for p in cal["operating_points"]:
        lines.append(
            f"  {p['target_far']:>10g}  {p['threshold']:>9.4f}  {p['dir']:>6.3f}  {p['far']:>12.4f}  "
            f"{p['absent_identities']:>10}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m index.calibrate", description=__doc__.split("\n\n")[0])
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gallery = open_gallery(args.gallery, readonly=args.dry_run)
    except GalleryLocked:
        print(
            f"index.calibrate: {args.gallery} is open for writing in another process (a running server?): stop it, "
            "calibrate, then start it again",
            file=sys.stderr,
        )
        return 1
    except GalleryError as exc:
        print(f"index.calibrate: {exc}", file=sys.stderr)
        return 1
    with gallery:
        xb, labels = read_labels(gallery)
        try:
            check_estimable(labels, args.far)
        except TooFewIdentitiesError as exc:
            print(f"index.calibrate: refused: {exc}", file=sys.stderr)
            return 2
        scores = leave_one_identity_out(xb, labels, top_k=args.top_k)
        result = calibration(
            scores,
            args.far,
            source="gallery",
            method="leave-one-identity-out",
            top_k=args.top_k,
            dataset=str(args.gallery),
        ).model_dump(mode="json")
        if not args.dry_run:
            gallery.set_calibration(result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    unlabelled = sum(label is None for label in labels)
    print(
        f"{args.gallery}: {result['gallery_identities']} labelled identities, {result['gallery_crops']} crops "
        f"({unlabelled} unlabelled); leave-one-identity-out, top {args.top_k}; "
        f"{len(scores.absent)} absent-identity and {len(scores.enrolled)} enrolled probes"
    )
    print(format_table(result))
    if args.dry_run:
        print("dry run: nothing written")
    else:
        print(f"written to {args.gallery}: restart the server to use it (REID_TARGET_FAR picks the operating point)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
