"""Bulk indexing: a folder of person crops (or a CSV manifest) -> embeddings -> the gallery.

    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR            # ONNX Runtime in-process
    python -m ingestion.bulk FOLDER --gallery DIR --backend triton --triton-url HOST:8001 --model-name NAME
    python -m ingestion.bulk LIST.csv --gallery DIR --artifact DIR          # path,person_id,camera_id[,captured_at,track_id]
    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --ray [ADDRESS]   # on Ray Data (ingestion.ray_bulk)
    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR --keep-crops     # also keep each file's bytes
    python -m ingestion.bulk FOLDER --gallery milvus://HOST:19530/reid --artifact DIR  # or a Milvus Lite .db file

Labels come from Market-1501 names (0002_c1s1_000451_03.jpg: person 0002, camera 1), DukeMTMC-reID names
(0005_c2_f0046985.jpg), or else the folder a file is in (FOLDER/<person_id>/*.jpg; camera from "_c<N>" in
the name if there). Files are read, hashed, decoded and resized in threads through formats.images (the
decoder the API uses), embedded in batches through any Embedder and added in batches. Running it again
adds nothing twice: a file whose sha256 is already in the gallery is a duplicate. Bad files are skipped
with their reasons; nothing outside FOLDER is read (symlinks out of it and "../" or absolute manifest
paths are refused).

--keep-crops keeps the bytes of every file it adds in the gallery's crop store (index/crops.py; the folder the
API uses with REID_KEEP_CROPS: --crops-dir, else REID_CROPS_DIR, else <gallery>/crops), written before the
gallery add as the API does, so an item never exists without its crop; ``python -m ingestion.reembed`` rebuilds
the gallery for another model from them and ``GET /v1/gallery/{id}/image`` serves them. A batch that would pass
the store's cap (--crops-max-bytes, else REID_CROPS_MAX_BYTES) stops the run with none of that batch added.
Files the gallery already holds get their crop kept too where it is missing (indexed before without the flag).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from tqdm import tqdm

from embedders.base import Embedder, create_embedder
from formats.images import ImageError, decode_image, resize
from formats.names import camera_in_name, is_image_file, parse_dataset_name
from index import Gallery, open_gallery
from index.crops import DEFAULT_MAX_BYTES, CropStore, CropStoreFull, crops_folder
from index.errors import ModelMismatch
from index.records import Record

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


# -- the pipeline --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    item: Item
    content_hash: str | None = None
    pixels: np.ndarray | None = None
    skip: str | None = None
    data: bytes | None = None  # the file's bytes, held only when its crop is to be kept


def read_or_skip(root: Path, rel: str) -> tuple[bytes | None, str | None]:
    """The bytes of root/rel, or None and the reason the file is skipped."""
    try:
        return read_inside(root, rel), None
    except PermissionError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def record_of(item: Item, content_hash: str) -> Record:
    return Record(
        person_id=item.person_id,
        camera_id=item.camera_id,
        captured_at=item.captured_at,
        track_id=item.track_id,
        source=item.rel,
        content_hash=content_hash,
        metadata=item.metadata,
    )


def _prepare(root: Path, item: Item, height: int, width: int, keep_bytes: bool = False) -> _Prepared:
    data, skip = read_or_skip(root, item.rel)
    if data is None:
        return _Prepared(item, skip=skip)
    content_hash = hashlib.sha256(data).hexdigest()
    try:
        pixels = resize(decode_image(data), height, width)
    except ImageError as exc:
        return _Prepared(item, content_hash, skip=f"{exc.code}: {exc.message}")
    return _Prepared(item, content_hash, pixels, data=data if keep_bytes else None)


def keep_crops(
    crops: CropStore, root: Path, files: Sequence[tuple[str, str]], blobs: Sequence[bytes] | None = None
) -> list[str | None]:
    """Keep the bytes of files about to be added to the gallery, before the add (as the API does), so an item
    never exists without its crop. The one crop-keeping step of both bulk paths.

    ``files`` are (path relative to root, content hash); ``blobs`` their bytes where the caller still holds them,
    else each file is read again (the Ray driver, whose workers hashed it). Returns, per file, None when its crop
    is kept, else why it must not be added (gone, or other bytes than were hashed). Raises CropStoreFull, with
    none of them kept, when they would pass the store's cap."""
    reasons: list[str | None] = []
    keep = []
    for i, (rel, digest) in enumerate(files):
        if blobs is not None:
            data, reason = blobs[i], None
        else:
            data, reason = read_or_skip(root, rel)
            if data is not None and hashlib.sha256(data).hexdigest() != digest:
                data, reason = None, "changed while it was being indexed"
        reasons.append(reason)
        if data is not None:
            keep.append(data)
    if keep:
        crops.put_many(keep)
    return reasons


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
    """Index items (paths relative to root) with a started embedder; see index_folder."""
    spec = embedder.spec
    if gallery.model_id != spec.model_id or gallery.dim != spec.dim:
        raise ModelMismatch(
            f"the gallery holds {gallery.dim}-d embeddings of {gallery.model_id!r}; "
            f"the embedder serves {spec.dim}-d embeddings of {spec.model_id!r}"
        )
    height, width = spec.input.height, spec.input.width
    summary = Summary()
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    seen: set[str] = set()
    workers = workers or min(4, len(os.sched_getaffinity(0)))
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="bulk-decode") as pool,
        tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):

        def schedule(batch):
            keep = crops is not None
            return asyncio.gather(
                *(loop.run_in_executor(pool, _prepare, root, it, height, width, keep) for it in batch)
            )

        pending = schedule(batches[0]) if batches else None
        for b in range(len(batches)):
            prepared = await pending
            if b + 1 < len(batches):
                pending = schedule(batches[b + 1])  # decode the next batch while this one embeds
            # Known files are not decoded into the model again (a rerun costs reads and hashes only);
            # gallery.add_new is what decides, under its write lock, so a concurrent writer cannot add twice.
            known = gallery.find_hashes([p.content_hash for p in prepared if p.content_hash is not None])
            fresh = []
            for p in prepared:
                if p.content_hash is not None and (p.content_hash in seen or p.content_hash in known):
                    summary.duplicates += 1
                elif p.skip is not None:
                    summary.skipped.append((p.item.rel, p.skip))
                else:
                    seen.add(p.content_hash)
                    fresh.append(p)
            if crops is not None:
                # The new files' crops before their add. Files the gallery already holds get theirs too, so a rerun
                # with --keep-crops fills the store of a gallery indexed without it (a kept crop is not rewritten).
                held = [p for p in prepared if p.data is not None and p.content_hash in known]
                files = [(p.item.rel, p.content_hash) for p in fresh + held]
                try:
                    await asyncio.to_thread(keep_crops, crops, root, files, [p.data for p in fresh + held])
                except CropStoreFull as exc:
                    raise CropStoreFull(
                        f"{exc}; stopped before adding {len(fresh)} files, after {summary.indexed} added with "
                        f"their crops"
                    ) from exc
                for p in prepared:
                    p.data = None
            if fresh:
                xb = await embedder.embed(np.stack([p.pixels for p in fresh]))
                records = [record_of(p.item, p.content_hash) for p in fresh]
                stored = await asyncio.to_thread(gallery.add_new, xb, records, model_id=spec.model_id)
                added = sum(was_added for _, was_added in stored)
                summary.indexed += added
                summary.duplicates += len(stored) - added
            bar.update(len(prepared))
            bar.set_postfix(indexed=summary.indexed, dup=summary.duplicates, skip=len(summary.skipped))
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


# -- command line --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingestion.bulk", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="folder of crops, or a CSV manifest (path,person_id,camera_id,...)")
    p.add_argument(
        "--gallery",
        required=True,
        help="gallery folder (created if missing), Milvus Lite .db file or milvus://HOST:PORT/COLLECTION",
    )
    p.add_argument("--backend", choices=["onnx", "triton"], default="onnx")
    p.add_argument("--artifact", type=Path, help="artifact folder with model.onnx (onnx backend)")
    p.add_argument("--triton-url", help="Triton address, e.g. localhost:8001 (triton backend)")
    p.add_argument("--model-name", help="Triton model name (triton backend)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--factory", default="Flat", help="faiss index type when the gallery is created")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, at most 4)")
    p.add_argument("--layout", choices=["auto", "names", "folders"], default="auto")
    p.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none unless on a terminal)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="read, decode and embed on Ray Data actors (ingestion.ray_bulk); no ADDRESS starts a local Ray in "
        "this process, 'auto' or ray://HOST:10001 joins a running cluster",
    )
    p.add_argument("--ray-actors", type=int, help="embedding actors on Ray (default: one per CPU of the cluster)")
    p.add_argument(
        "--keep-crops",
        action="store_true",
        help="keep each added file's bytes in the crop store the API serves and reembed reads (index/crops.py)",
    )
    p.add_argument(
        "--crops-dir", type=Path, help="where crops are kept (default: REID_CROPS_DIR, else <gallery folder>/crops)"
    )
    p.add_argument(
        "--crops-max-bytes",
        type=int,
        help=f"the crop store's cap (default: REID_CROPS_MAX_BYTES, else {DEFAULT_MAX_BYTES})",
    )
    args = p.parse_args(argv)
    if args.backend == "onnx" and args.artifact is None:
        p.error("the onnx backend needs --artifact")
    if args.backend == "triton" and args.triton_url is None:
        p.error("the triton backend needs --triton-url")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.ray_actors is not None and (args.ray is None or args.ray_actors < 1):
        p.error("--ray-actors needs --ray and must be at least 1")
    if not args.keep_crops and (args.crops_dir is not None or args.crops_max_bytes is not None):
        p.error("--crops-dir and --crops-max-bytes need --keep-crops")
    if args.keep_crops:
        # The API's settings (REID_CROPS_DIR, REID_CROPS_MAX_BYTES) by default, so the server finds these crops.
        try:
            args.crops_dir = crops_folder(args.gallery, args.crops_dir or os.environ.get("REID_CROPS_DIR") or None)
            cap = args.crops_max_bytes or int(os.environ.get("REID_CROPS_MAX_BYTES") or DEFAULT_MAX_BYTES)
        except ValueError as exc:
            p.error(str(exc))
        if args.crops_dir is None:
            p.error("--keep-crops with a Milvus gallery needs --crops-dir (a collection has no folder)")
        if cap < 1:
            p.error("--crops-max-bytes must be at least 1")
        args.crops_max_bytes = cap
    return args


async def _run(args: argparse.Namespace) -> Summary:
    settings = {
        "backend": args.backend,
        "artifact": args.artifact,
        "triton_url": args.triton_url,
        "model_name": args.model_name,
        "protocol": args.protocol,
    }
    embedder = create_embedder(**settings)
    await embedder.start()
    try:
        spec = embedder.spec
        crops = CropStore.open(args.crops_dir, args.crops_max_bytes) if args.keep_crops else None
        with open_gallery(args.gallery, model_id=spec.model_id, dim=spec.dim, factory=args.factory) as g:
            if args.ray is not None:
                from ingestion.ray_bulk import index_folder_ray  # lazily: the threaded path never imports Ray

                # This embedder has checked the model and told its spec; the actors start their own to embed.
                return await asyncio.to_thread(
                    index_folder_ray,
                    args.folder,
                    g,
                    spec,
                    settings,
                    batch_size=args.batch_size,
                    actors=args.ray_actors,
                    layout=args.layout,
                    progress=not args.no_progress and sys.stderr.isatty(),  # logs get the summary only
                    crops=crops,
                )
            return await index_folder(
                args.folder,
                g,
                embedder,
                batch_size=args.batch_size,
                workers=args.workers,
                layout=args.layout,
                progress=not args.no_progress and sys.stderr.isatty(),  # logs get the summary only
                crops=crops,
            )
    finally:
        await embedder.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.ray is None:
            summary = asyncio.run(_run(args))
        else:
            from ingestion.ray_bulk import ray_session

            with ray_session(args.ray):
                summary = asyncio.run(_run(args))
    except CropStoreFull as exc:
        print(
            f"ingestion.bulk: stopped: the crop store {args.crops_dir} is full: {exc}.\n"
            "Raise --crops-max-bytes (or free space) and run again: files already added are skipped.",
            file=sys.stderr,
        )
        return 1
    print(summary.format())
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
