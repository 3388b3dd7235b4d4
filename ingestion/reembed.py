"""Rebuild a gallery for another model from its kept crops: the model upgrade of a live gallery.

    python -m ingestion.reembed --artifact artifacts/new --to galleries/new [--from galleries/live]
    reid gallery reembed --artifact artifacts/new --to galleries/new        # the same, from the CLI

Every item of the source gallery (any backend: a folder, milvus://..., a Milvus Lite .db file; read through the
gallery protocol, never written) whose crop was kept (REID_KEEP_CROPS, index/crops.py) is decoded, embedded with
the new model and added to the destination gallery with the same metadata and, where the destination can take
it, the same id, so clients holding ids keep them. Items whose crop was not kept are counted and skipped.

Running it again resumes: an item whose content hash the destination holds is not embedded again (the
gallery's content-hash de-duplication, as ``add_new``), and items added to the source since are picked up. The
crops go to the destination's crops folder too (hard links where possible), so the new gallery can serve them
and be upgraded again. At the end it reports, per identity, whether its nearest other identity (the best score
between any crop of it and any crop of another person) is the same under both models.

The server keeps refusing a gallery built with another model: serve the result with the new artifact.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedders.base import Embedder, create_embedder
from formats.images import ImageError, decode_image, resize
from index.crops import DEFAULT_MAX_BYTES, CropStore, crops_folder
from index.errors import GalleryError
from index.records import Record, SearchFilter

SCAN_BATCH = 256  # items read from the source per step (and embedded together)
NEIGHBOUR_K = 16  # first search depth when looking for another identity; widened x4 while none is found
EXAMPLES = 10


@dataclass
class Summary:
    source_items: int = 0
    embedded: int = 0
    kept_ids: int = 0  # embedded items stored under their source id
    already: int = 0  # in the destination before this run (a resumed or repeated run)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0
    neighbours: dict = field(default_factory=dict)
    crops_dir: str = ""  # where the destination's crops are (for REID_CROPS_DIR when it is not <gallery>/crops)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def to_dict(self) -> dict:
        return {
            "source_items": self.source_items,
            "embedded": self.embedded,
            "kept_ids": self.kept_ids,
            "already_in_destination": self.already,
            "skipped": dict(self.skipped),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.embedded / self.seconds, 2) if self.seconds > 0 else 0.0,
            "rank1_neighbours": self.neighbours,
            "crops_dir": self.crops_dir,
        }

    def format(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        lines = [
            f"source items {self.source_items}: embedded {self.embedded} ({self.kept_ids} under their source id), "
            f"already in the destination {self.already}, skipped {skipped}; {self.seconds:.1f} s",
        ]
        if self.crops_dir:
            lines.append(f"the destination's crops are in {self.crops_dir}")
        n = self.neighbours
        if n:
            lines.append(
                f"identities' nearest other identity: {n['changed']} of {n['identities']} changed "
                f"({100 * n['changed_fraction']:.1f}%)"
            )
            lines += [
                f"  {e['person_id']}: {e['before']} ({e['before_score']:.3f}) -> {e['after']} ({e['after_score']:.3f})"
                for e in n["examples"]
            ]
        return "\n".join(lines)


def _decode(data: bytes | None, height: int, width: int) -> np.ndarray | str:
    if data is None:
        return "crop not kept"
    try:
        return resize(decode_image(data), height, width)
    except ImageError as exc:
        return f"undecodable crop ({exc.code})"


def _crop_bytes(store: CropStore | None, digest: str | None) -> bytes | None:
    if store is None or not digest:
        return None
    try:
        kept = store.get(digest)
    except ValueError:  # not a sha256: no crop was ever kept under it
        return None
    return None if kept is None else kept[0]


async def reembed(
    source,
    destination,
    embedder: Embedder,
    crops: CropStore | None,
    *,
    dst_crops: CropStore | None = None,
    batch_size: int = SCAN_BATCH,
    workers: int | None = None,
    progress: bool = False,
) -> Summary:
    """Embed the source gallery's kept crops with a started ``embedder`` into ``destination`` (see the module)."""
    spec = embedder.spec
    summary = Summary()
    started = time.perf_counter()
    keep_ids = True  # until the destination refuses an id (it assigned it already): then new ids
    workers = workers or min(4, len(os.sched_getaffinity(0)))
    loop = asyncio.get_running_loop()
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="reembed-decode") as pool,
        tqdm(total=len(source), unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):
        after = 0
        while True:
            ids, _, records = await asyncio.to_thread(source.scan, after, batch_size)
            if not len(ids):
                break
            after = int(ids[-1])
            summary.source_items += len(ids)
            known = await asyncio.to_thread(
                destination.find_hashes, [r.content_hash for r in records if r.content_hash]
            )
            todo = []
            for item_id, record in zip(ids.tolist(), records, strict=True):
                if record.content_hash and record.content_hash in known:
                    summary.already += 1
                else:
                    todo.append((item_id, record))
            blobs = [_crop_bytes(crops, r.content_hash) for _, r in todo]
            decoded = await asyncio.gather(
                *(loop.run_in_executor(pool, _decode, b, spec.input.height, spec.input.width) for b in blobs)
            )
            fresh = [(i, r) for (i, r), d in zip(todo, decoded, strict=True) if not isinstance(d, str)]
            for d in decoded:
                if isinstance(d, str):
                    summary.skip(d)
            if fresh:
                pixels = np.stack([d for d in decoded if not isinstance(d, str)])
                xb = np.concatenate(
                    [
                        await embedder.embed(pixels[s : s + spec.max_batch_size])
                        for s in range(0, len(pixels), spec.max_batch_size)
                    ]
                )
                if dst_crops is not None and crops is not None:
                    for _, r in fresh:  # the crop first: an item is never in the gallery without it
                        await asyncio.to_thread(dst_crops.copy_from, crops, r.content_hash)
                records_out = [_copy(r) for _, r in fresh]
                if keep_ids:
                    try:
                        await asyncio.to_thread(
                            destination.import_items, [i for i, _ in fresh], xb, records_out, model_id=spec.model_id
                        )
                        summary.kept_ids += len(fresh)
                        summary.embedded += len(fresh)
                    except (GalleryError, ValueError):
                        keep_ids = False  # the destination holds other items: new ids from here on
                if not keep_ids:
                    stored = await asyncio.to_thread(destination.add_new, xb, records_out, model_id=spec.model_id)
                    added = sum(was_added for _, was_added in stored)
                    summary.embedded += added
                    summary.already += len(stored) - added
            bar.update(len(ids))
            bar.set_postfix(embedded=summary.embedded, skipped=sum(summary.skipped.values()))
    summary.seconds = time.perf_counter() - started
    return summary


def _copy(record: Record) -> Record:
    return Record(
        person_id=record.person_id,
        camera_id=record.camera_id,
        captured_at=record.captured_at,
        track_id=record.track_id,
        source=record.source,
        content_hash=record.content_hash,
        metadata=dict(record.metadata or {}),
        added_at=record.added_at,
    )


# -- did the upgrade change who looks like whom? --------------------------------------------------------------


def nearest_other_identities(gallery, persons: set[str], batch_size: int = SCAN_BATCH) -> dict[str, tuple[str, float]]:
    """For each person in ``persons``: the other person (of ``persons``) with the best score between any of their
    items, and that score, found with the gallery's own search (any backend, exact or approximate index)."""
    best: dict[str, tuple[str, float]] = {}
    only = SearchFilter(person_ids=persons)
    total = len(gallery)
    after = 0
    while True:
        ids, xb, records = gallery.scan(after, batch_size)
        if not len(ids):
            break
        after = int(ids[-1])
        pending = [i for i, r in enumerate(records) if r.person_id in persons]
        k = NEIGHBOUR_K
        while pending:
            k = min(k, total)
            rows = gallery.search(xb[pending], k, only, model_id=gallery.model_id)
            still = []
            for qi, hits in zip(pending, rows, strict=True):
                own = records[qi].person_id
                other = next((h for h in hits if h.record.person_id != own), None)
                if other is None:
                    if len(hits) == k and k < total:
                        still.append(qi)  # every hit so far is the same person: look deeper
                    continue
                score, person = other.score, other.record.person_id
                if own not in best or (score, person) > (best[own][1], best[own][0]):
                    best[own] = (person, score)
            pending, k = still, k * 4
    return best


def neighbour_changes(source, destination) -> dict:
    """How many identities (held by both galleries) have another nearest other identity after the re-embedding."""
    persons_src = _persons(source)
    persons = persons_src & _persons(destination)
    before = nearest_other_identities(source, persons)
    after = nearest_other_identities(destination, persons)
    compared = sorted(p for p in persons if p in before and p in after)
    changed = [p for p in compared if before[p][0] != after[p][0]]
    return {
        "identities": len(compared),
        "changed": len(changed),
        "changed_fraction": len(changed) / len(compared) if compared else 0.0,
        "examples": [
            {
                "person_id": p,
                "before": before[p][0],
                "before_score": before[p][1],
                "after": after[p][0],
                "after_score": after[p][1],
            }
            for p in changed[:EXAMPLES]
        ],
    }


def _persons(gallery, batch_size: int = 4096) -> set[str]:
    persons: set[str] = set()
    after = 0
    while True:
        ids, _, records = gallery.scan(after, batch_size)
        if not len(ids):
            return persons
        after = int(ids[-1])
        persons.update(r.person_id for r in records if r.person_id is not None)


# -- command line --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingestion.reembed", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, help="the new model's artifact folder (onnx backend)")
    p.add_argument("--to", dest="destination", required=True, help="destination gallery: folder, milvus://..., or .db")
    p.add_argument(
        "--from",
        dest="source",
        default=os.environ.get("REID_GALLERY_URI") or os.environ.get("REID_GALLERY_DIR"),
        help="source gallery (default: REID_GALLERY_URI, else REID_GALLERY_DIR: the gallery the server uses)",
    )
    p.add_argument(
        "--crops",
        type=Path,
        default=os.environ.get("REID_CROPS_DIR"),
        help="the source's kept crops (default: REID_CROPS_DIR, else <source folder>/crops)",
    )
    p.add_argument("--to-crops", type=Path, help="where the destination keeps crops (default: <destination>/crops)")
    p.add_argument("--backend", choices=["onnx", "triton"], default="onnx")
    p.add_argument("--triton-url", help="Triton address, e.g. localhost:8001 (triton backend)")
    p.add_argument("--model-name", help="Triton model name (triton backend)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--factory", help="faiss index type of a new destination (default: the source's)")
    p.add_argument("--batch-size", type=int, default=SCAN_BATCH)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, at most 4)")
    p.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none unless on a terminal)")
    args = p.parse_args(argv)
    if args.source is None:
        p.error("give --from (or set REID_GALLERY_URI / REID_GALLERY_DIR)")
    if args.backend == "onnx" and args.artifact is None:
        p.error("the onnx backend needs --artifact")
    if args.backend == "triton" and args.triton_url is None:
        p.error("the triton backend needs --triton-url")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if os.path.abspath(str(args.source)) == os.path.abspath(args.destination):
        p.error("--to must be another gallery than --from (a gallery holds one model's embeddings)")
    return args


def _crop_stores(args: argparse.Namespace) -> tuple[CropStore | None, CropStore | None]:
    src_root = crops_folder(args.source, args.crops)
    crops = CropStore.open(src_root, DEFAULT_MAX_BYTES) if src_root is not None and Path(src_root).is_dir() else None
    dst_root = crops_folder(args.destination, args.to_crops)
    dst = None
    if dst_root is not None and crops is not None and Path(dst_root).resolve() != Path(crops.root).resolve():
        dst = CropStore.open(dst_root, int(os.environ.get("REID_CROPS_MAX_BYTES", DEFAULT_MAX_BYTES)))
    return crops, dst


async def _run(args: argparse.Namespace) -> Summary:
    from index.backends import open_gallery

    embedder = create_embedder(
        args.backend,
        artifact=args.artifact,
        triton_url=args.triton_url,
        model_name=args.model_name,
        protocol=args.protocol,
    )
    await embedder.start()
    try:
        spec = embedder.spec
        with open_gallery(args.source, readonly=True) as source:
            crops, dst_crops = _crop_stores(args)
            if crops is None:
                raise GalleryError(
                    "the source gallery has no kept crops (index it with python -m ingestion.bulk --keep-crops, run "
                    "the server with REID_KEEP_CROPS=true, or give --crops)"
                )
            factory = args.factory or source.factory
            with open_gallery(args.destination, model_id=spec.model_id, dim=spec.dim, factory=factory) as dst:
                summary = await reembed(
                    source,
                    dst,
                    embedder,
                    crops,
                    dst_crops=dst_crops,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    progress=not args.no_progress and sys.stderr.isatty(),
                )
                summary.neighbours = await asyncio.to_thread(neighbour_changes, source, dst)
                # Content-addressed, so a destination without a crops folder of its own can share the source's.
                summary.crops_dir = str((dst_crops or crops).root)
        return summary
    finally:
        await embedder.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = asyncio.run(_run(args))
    except GalleryError as exc:  # another model in the destination, no crops, a locked or corrupt gallery
        print(f"reembed: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
