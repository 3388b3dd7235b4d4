"""Bulk indexing: a folder of person crops (or a CSV manifest) -> embeddings -> the gallery.

    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR            # ONNX Runtime in-process
    python -m ingestion.bulk FOLDER --gallery DIR --backend triton --triton-url HOST:8001 --model-name NAME
    python -m ingestion.bulk LIST.csv --gallery DIR --artifact DIR          # path,person_id,camera_id[,captured_at,track_id]
    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --ray [ADDRESS]   # on Ray Data (ingestion.ray_bulk)
    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --keep-crops     # also keep each file's bytes
    python -m ingestion.bulk FOLDER --gallery milvus://HOST:19530/reid --artifact DIR  # or a Milvus Lite .db file

Labels come from Market-1501 names (0002_c1s1_000451_03.jpg: person 0002, camera 1), DukeMTMC-reID names
(0005_c2_f0046985.jpg), or else the folder a file is in (FOLDER/<person_id>/*.jpg; camera from "_c<N>" in
the name if there). Files go through the one write pipeline (ingestion.pipeline, as the API's adds): read,
hashed, decoded and resized in threads, embedded in batches through any Embedder and added in batches. Running
it again adds nothing twice: a file whose sha256 is already in the gallery is a duplicate. Bad files are skipped
with their reasons; nothing outside FOLDER is read (symlinks out of it and "../" or absolute manifest paths are
refused). The command line is ingestion.cli's; this module is the library it calls.

--keep-crops keeps the bytes of every file it adds in the gallery's crop store (index/crops.py; the folder the
API uses with REID_KEEP_CROPS: --crops-dir, else REID_CROPS_DIR, else <gallery>/crops), written before the
gallery add as the API does, so an item never exists without its crop; ``python -m ingestion.reembed`` rebuilds
the gallery for another model from them and ``GET /v1/gallery/{id}/image`` serves them. A batch that would pass
the store's cap (--crops-max-bytes, else REID_CROPS_MAX_BYTES) stops the run with none of that batch added.
Files the gallery already holds get their crop kept too where it is missing (indexed before without the flag).
"""

from __future__ import annotations

import asyncio
import csv
import functools
import os
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from tqdm import tqdm

from embedders.base import Embedder
from formats.names import camera_in_name, is_image_file, parse_dataset_name
from index import Gallery
from index.crops import CropStore, CropStoreFull
from index.records import Record
from ingestion import pipeline

MAX_FILE_BYTES = 50 * 1024 * 1024  # far above any crop; bounds memory per worker
Layout = Literal["auto", "names", "folders"]


@dataclass(frozen=True)
class Item:
    """One file to index: its path relative to the root and its labels."""

    rel: str
    person_id: str | None = None
    camera_id: str | None = None
    captured_at: float | None = None
    track_id: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class Summary:
    indexed: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    failed: int = 0  # of the skipped: images the write pipeline refused (unreadable, undecodable, too small...)

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "indexed": self.indexed,
            "duplicates": self.duplicates,
            "skipped": len(self.skipped),
            "skipped_by_reason": dict(Counter(reason.split(":")[0] for _, reason in self.skipped)),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
        }

    def count(self, results: Iterable[pipeline.Result]) -> None:
        """Add the write pipeline's results of one batch."""
        for r in results:
            if r.error is not None:
                self.skipped.append((r.name, r.reason or ""))  # an error always has a reason
                self.failed += 1
            elif r.added:
                self.indexed += 1
            else:
                self.duplicates += 1

    def format(self) -> str:
        lines = [
            f"indexed {self.indexed}, duplicates {self.duplicates}, skipped {len(self.skipped)} "
            f"in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


# -- finding the files ---------------------------------------------------------------------------------------


def labels_from_path(rel: PurePosixPath, layout: Layout = "auto") -> Item:
    """Person and camera from a Market-1501 or Duke name, else from the parent folder (folder-per-person)."""
    if layout in ("auto", "names") and (name := parse_dataset_name(rel.stem)) is not None:
        return Item(str(rel), person_id=name.person_id, camera_id=name.camera_id, metadata=dict(name.details))
    person = rel.parent.name if layout != "names" and len(rel.parts) > 1 else None
    return Item(str(rel), person_id=person or None, camera_id=camera_in_name(rel.stem))


def walk_folder(root: Path, layout: Layout = "auto") -> tuple[list[Item], list[tuple[str, str]]]:
    """Image files under root in a stable order; symlinked folders are not followed (reported)."""
    items, skipped = [], []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs.sort()
        for d in list(dirs):
            if (here / d).is_symlink():
                skipped.append((_rel(root, here / d), "symlinked folder: not followed"))
                dirs.remove(d)
        for name in sorted(files):
            rel = PurePosixPath(_rel(root, here / name))
            if not is_image_file(rel):
                skipped.append((str(rel), "not an image file name (.jpg, .jpeg, .png, .webp)"))
                continue
            items.append(labels_from_path(rel, layout))
    return items, skipped


def read_manifest(csv_path: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """Rows of path, person_id, camera_id[, captured_at, track_id]; paths relative to the CSV's folder."""
    items, skipped = [], []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path", "person_id", "camera_id"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: the manifest needs the columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            path = (row.get("path") or "").strip()
            if not path:
                skipped.append((f"{csv_path.name}:{line}", "manifest row without a path"))
                continue
            try:
                captured = _parse_time(row.get("captured_at"))
            except ValueError as exc:
                skipped.append((path, f"bad captured_at: {exc}"))
                continue
            items.append(
                Item(
                    path,
                    person_id=(row.get("person_id") or "").strip() or None,
                    camera_id=(row.get("camera_id") or "").strip() or None,
                    captured_at=captured,
                    track_id=(row.get("track_id") or "").strip() or None,
                )
            )
    return items, skipped


def _parse_time(text: str | None) -> float | None:
    """Unix seconds or ISO 8601 (a time without a zone is taken as UTC)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def read_inside(root: Path, rel: str) -> bytes:
    """The bytes of root/rel, refusing anything that resolves outside root or is not a regular file."""
    parts = PurePosixPath(rel)
    if parts.is_absolute() or Path(rel).is_absolute() or ".." in parts.parts:
        raise PermissionError("path leaves the folder (absolute or '..')")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise PermissionError("symlink pointing outside the folder")
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise PermissionError("not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise PermissionError(f"file larger than {MAX_FILE_BYTES} bytes")
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)  # realpath resolved every link; refuse one swapped in since
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


# -- through the write pipeline -------------------------------------------------------------------------------


def record_of(item: Item) -> Record:
    """The record a file is stored with (its content hash is the pipeline's)."""
    return Record(
        person_id=item.person_id,
        camera_id=item.camera_id,
        captured_at=item.captured_at,
        track_id=item.track_id,
        source=item.rel,
        metadata=item.metadata,
    )


def pipeline_items(root: Path, items: Iterable[Item]) -> Iterator[pipeline.Item]:
    """Files as the write pipeline's items: reported by their path, read inside root when their turn comes."""
    for item in items:
        yield pipeline.Item(item.rel, functools.partial(read_inside, root, item.rel), record_of(item))


async def index_items(
    root: Path,
    items: Sequence[Item],
    gallery: Gallery,
    embedder: Embedder,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = False,
    crops: CropStore | None = None,
) -> Summary:
    """Index items (paths relative to root) with a started embedder through the write pipeline; see index_folder.

    Files are read, hashed and decoded on ``workers`` threads, the next batch while this one is embedded."""
    summary = Summary()
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    workers = workers or min(4, len(os.sched_getaffinity(0)))
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="bulk-decode") as pool,
        tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):
        writes = pipeline.WritePipeline(
            gallery, embedder, crops=crops, run_blocking=lambda fn: loop.run_in_executor(pool, fn)
        )
        try:
            async for results in writes.add_batches(pipeline_items(root, items), batch_size=batch_size):
                summary.count(results)
                bar.update(len(results))
                bar.set_postfix(indexed=summary.indexed, dup=summary.duplicates, skip=len(summary.skipped))
        except CropStoreFull as exc:
            raise CropStoreFull(f"{exc}; stopped after {summary.indexed} files added with their crops") from exc
    summary.seconds = time.perf_counter() - started
    return summary


def find_items(folder: str | os.PathLike, layout: Layout = "auto") -> tuple[Path, list[Item], list[tuple[str, str]]]:
    """The root that item paths are relative to, the items of a folder or CSV manifest, and what was skipped."""
    source = Path(folder)
    if source.is_file() and source.suffix.lower() == ".csv":
        return source.parent, *read_manifest(source)
    if source.is_dir():
        return source, *walk_folder(source, layout)
    raise FileNotFoundError(f"{source} is neither a folder nor a .csv manifest")


async def index_folder(
    folder: str | os.PathLike,
    gallery: Gallery,
    embedder: Embedder,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    layout: Layout = "auto",
    progress: bool = False,
    crops: CropStore | None = None,
) -> Summary:
    """Index a folder of crops, or a CSV manifest, into the gallery with a started embedder.

    Idempotent and resumable: files whose content hash the gallery holds are counted as duplicates. With
    ``crops``, each added file's bytes are kept there first (keep_crops); CropStoreFull stops it between batches.
    """
    root, items, skipped = find_items(folder, layout)
    summary = await index_items(
        root, items, gallery, embedder, batch_size=batch_size, workers=workers, progress=progress, crops=crops
    )
    summary.skipped[:0] = skipped
    return summary


if __name__ == "__main__":  # python -m ingestion.bulk, as documented: the command line lives in ingestion.cli
    import sys

    from ingestion.cli import bulk_main

    sys.exit(bulk_main())
