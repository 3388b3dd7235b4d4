"""A gallery's kept crops of a time window -> a folder that training reads: the tracks as a training set.

    python -m ingestion.track_dataset --gallery galleries/cam1 --out /tmp/tracks \
        [--time-from 2026-12-01T00:00:00Z] [--time-to 2026-12-08T00:00:00Z] [--crops-dir DIR]

The training side may not import the gallery (import-linter), so adaptation (``python -m training.adapt``) runs
this as a child process and reads what it writes:

    OUT/crops/<sha256>.<jpg|png|webp>   each crop's bytes as kept (hard-linked when the file system allows)
    OUT/tracks.json                     {"version": 1, "gallery", "time_from", "time_to" (Unix s or null),
                                         "model_id", "counts": {...}, "crops": [{"file", "track_id",
                                         "camera_id", "captured_at", "item_id", "frame", "box"}, ...]}

Only items with a track, a capture time inside [time_from, time_to] and a kept crop are written; the others are
counted by reason in "counts". The gallery is opened read-only and never written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from index import open_gallery
from index.crops import CropStore, crops_folder
from index.errors import GalleryError

MANIFEST = "tracks.json"
CROPS = "crops"
VERSION = 1
SCAN_BATCH = 1024


@dataclass
class TrackSetSummary:
    out: Path
    crops: int = 0
    tracks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> items

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def format(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"wrote {self.out}: {self.crops} crops of {self.tracks} tracks; skipped {skipped}"


def _place(store: CropStore, digest: str, folder: Path) -> str | None:
    """Put the kept crop ``digest`` into ``folder``; its file name there, or None when it is not kept."""
    try:
        source = store.path(digest)
    except ValueError:  # not a sha256: no crop was ever kept under it
        return None
    if source is None:
        return None
    target = folder / source.name
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, target)
    return source.name


def _entry(record, file: str) -> dict:
    meta = record.metadata or {}
    return {
        "file": f"{CROPS}/{file}",
        "track_id": record.track_id,
        "camera_id": record.camera_id,
        "captured_at": record.captured_at,
        "item_id": record.id,
        "frame": meta.get("frame"),
        "box": meta.get("box"),
    }


def _why_not(record, time_from: float | None, time_to: float | None) -> str | None:
    if not record.track_id:
        return "no track"
    t = record.captured_at
    if t is None:
        return "no capture time"
    if (time_from is not None and t < time_from) or (time_to is not None and t > time_to):
        return "outside the window"
    return None


def export_tracks(
    gallery: str | os.PathLike,
    out: str | os.PathLike,
    *,
    time_from: float | None = None,
    time_to: float | None = None,
    crops_dir: str | os.PathLike | None = None,
) -> TrackSetSummary:
    """Write the gallery's tracked items captured in [time_from, time_to] with their kept crops into ``out``
    (which must be empty or absent); see the module. Raises GalleryError when the gallery keeps no crops."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    root = crops_folder(gallery, crops_dir)
    if root is None or not Path(root).is_dir():
        raise GalleryError(
            f"the gallery keeps no crops{f' in {root}' if root else ''} (index with --keep-crops, or give --crops-dir)"
        )
    store = CropStore(Path(root))  # reads only: no need to count the store's size
    folder = out / CROPS
    folder.mkdir(parents=True, exist_ok=True)
    summary, entries, after = TrackSetSummary(out), [], 0
    with open_gallery(gallery, readonly=True) as g:
        model_id = g.model_id
        while True:
            ids, _, records = g.scan(after, SCAN_BATCH)
            if len(ids) == 0:
                break
            after = int(ids[-1])
            for record in records:
                reason = _why_not(record, time_from, time_to)
                file = None if reason else _place(store, record.content_hash or "", folder)
                if file is None:
                    summary.skip(reason or "crop not kept")
                else:
                    entries.append(_entry(record, file))
    summary.crops, summary.tracks = len(entries), len({e["track_id"] for e in entries})
    manifest = {
        "version": VERSION,
        "gallery": str(gallery),
        "time_from": time_from,
        "time_to": time_to,
        "model_id": model_id,
        "counts": {"crops": summary.crops, "tracks": summary.tracks, "skipped": summary.skipped},
        "crops": entries,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return summary
