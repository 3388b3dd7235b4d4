"""Rebuild a gallery for another model from its kept crops: the model upgrade of a live gallery.

    python -m ingestion.reembed --artifact artifacts/new --to galleries/new [--from galleries/live]
    reid gallery reembed --artifact artifacts/new --to galleries/new        # the same, from the CLI

Every item of the source gallery (any backend: a folder, milvus://..., a Milvus Lite .db file; read through the
gallery protocol, never written) whose crop was kept (REID_KEEP_CROPS, index/crops.py) is decoded, embedded with
the new model and added to the destination gallery with the same metadata and, where the destination can take
it, the same id, so clients holding ids keep them. Items whose crop was not kept are counted and skipped.

Running it again resumes: an item whose content hash the destination holds is not embedded again (the
gallery's content-hash de-duplication, as ``add_new``), and items added to the source since are picked up. The
crops go to the destination's crops folder too, so the new gallery can serve them and be upgraded again. Items go
through the one write pipeline (ingestion.pipeline), as every other write. The command line is ingestion.cli's. At the end it reports, per identity, whether its nearest other identity (the best score
between any crop of it and any crop of another person) is the same under both models.

The server keeps refusing a gallery built with another model: serve the result with the new artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from tqdm import tqdm

from embedders.base import Embedder
from formats.images import ImageError
from index.crops import CropStore
from index.records import SearchFilter
from ingestion.pipeline import Item, WritePipeline

SCAN_BATCH = 256  # items read from the source per step (and embedded together)
NEIGHBOUR_K = 16  # first search depth when looking for another identity; widened x4 while none is found
EXAMPLES = 10
CROP_NOT_KEPT = "crop not kept"


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


def _kept_crop(store: CropStore | None, digest: str | None) -> bytes:
    """The crop kept under ``digest``; FileNotFoundError (the pipeline's "unreadable") when there is none."""
    kept = None
    if store is not None and digest:
        with contextlib.suppress(ValueError):  # not a sha256: no crop was ever kept under it
            kept = store.get(digest)
    if kept is None:
        raise FileNotFoundError(CROP_NOT_KEPT)
    return kept[0]


def _skip_reason(error: Exception) -> str:
    return f"undecodable crop ({error.code})" if isinstance(error, ImageError) else CROP_NOT_KEPT


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
    """Embed the source gallery's kept crops with a started ``embedder`` into ``destination`` (see the module),
    through the write pipeline: under the source ids while the destination takes them, then under new ids."""
    summary = Summary()
    started = time.perf_counter()
    workers = workers or min(4, len(os.sched_getaffinity(0)))
    loop = asyncio.get_running_loop()
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="reembed-decode") as pool,
        tqdm(total=len(source), unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):
        writes = WritePipeline(
            destination,
            embedder,
            crops=dst_crops if crops is not None else None,  # the crop first: an item is never there without it
            keep_ids=True,
            run_blocking=lambda fn: loop.run_in_executor(pool, fn),
        )
        after = 0
        while True:
            ids, _, records = await asyncio.to_thread(source.scan, after, batch_size)
            if not len(ids):
                break
            after = int(ids[-1])
            summary.source_items += len(ids)
            items = [
                Item(str(i), functools.partial(_kept_crop, crops, r.content_hash), replace(r, id=i))
                for i, r in zip(ids.tolist(), records, strict=True)
            ]
            for item, result in zip(items, await writes.add(items), strict=True):
                if result.error is not None:
                    summary.skip(_skip_reason(result.error))
                elif not result.added:
                    summary.already += 1
                else:
                    summary.embedded += 1
                    summary.kept_ids += result.id == item.record.id
            bar.update(len(ids))
            bar.set_postfix(embedded=summary.embedded, skipped=sum(summary.skipped.values()))
    summary.seconds = time.perf_counter() - started
    return summary


# -- did the upgrade change who looks like whom? --------------------------------------------------------------


def nearest_other_identities(gallery, persons: set[str], batch_size: int = SCAN_BATCH) -> dict[str, tuple[str, float]]:
    """For each person in ``persons``: the other person (of ``persons``) with the best score between any of their
    items, and that score, found with the gallery's own search (any backend, exact or approximate index)."""
    best: dict[str, tuple[str, float]] = {}
    only = SearchFilter(person_ids=frozenset(persons))
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


if __name__ == "__main__":  # python -m ingestion.reembed, as documented: the command line lives in ingestion.cli
    import sys

    from ingestion.cli import reembed_main

    sys.exit(reembed_main())
