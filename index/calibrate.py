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

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.backends import open_gallery
from index.calibration import (
    DEFAULT_TOP_K,
    calibration,
    check_estimable,
    leave_one_identity_out,
)
from index.protocol import Gallery

SCAN_ROWS = 4096


@dataclass(frozen=True)
class GalleryCalibration:
    """What calibrating a gallery measured: the calibration (as stored) and the counts behind it."""

    calibration: dict
    unlabelled: int  # crops without a person id (left out)
    absent_probes: int
    enrolled_probes: int
    written: bool


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


def calibrate_gallery(
    location: str | os.PathLike,
    fars: Sequence[float],
    *,
    top_k: int = DEFAULT_TOP_K,
    dry_run: bool = False,
) -> GalleryCalibration:
    """Calibrate the gallery at ``location`` on its own labelled people and store the result in it (not when
    ``dry_run``: then it is opened read-only). Raises GalleryLocked when another process writes it, GalleryError
    when it cannot be opened, TooFewIdentitiesError (nothing written) when a FAR needs more identities."""
    with open_gallery(location, readonly=dry_run) as gallery:
        xb, labels = read_labels(gallery)
        check_estimable(labels, fars)
        scores = leave_one_identity_out(xb, labels, top_k=top_k)
        result = calibration(
            scores,
            fars,
            source="gallery",
            method="leave-one-identity-out",
            top_k=top_k,
            dataset=str(location),
        ).model_dump(mode="json")
        if not dry_run:
            gallery.set_calibration(result)
    return GalleryCalibration(
        calibration=result,
        unlabelled=sum(label is None for label in labels),
        absent_probes=len(scores.absent),
        enrolled_probes=len(scores.enrolled),
        written=not dry_run,
    )


def format_table(cal: dict) -> str:
    lines = [f"  {'target FAR':>10}  {'threshold':>9}  {'DIR':>6}  {'measured FAR':>12}  {'absent ids':>10}"]
    for p in cal["operating_points"]:
        lines.append(
            f"  {p['target_far']:>10g}  {p['threshold']:>9.4f}  {p['dir']:>6.3f}  {p['far']:>12.4f}  "
            f"{p['absent_identities']:>10}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from index.cli import calibrate_main

    raise SystemExit(calibrate_main())
