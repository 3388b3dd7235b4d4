"""Copy a gallery from any backend to any backend, keeping every id, record and vector.

    python -m index.copy galleries/site-a milvus://milvus:19530/site_a     # reid gallery copy SRC DST
    python -m index.copy galleries/site-a galleries/site-a.db --factory HNSW32

The source is opened read-only (an embedded source may keep serving while it is copied; items it gains
meanwhile are copied if the scan reaches them). The destination is created with the source's model_id and dim
(refused with ModelMismatch if it exists with others) and the index type of --factory, else the source's.
Items go over in id order, in batches, under their own ids; each batch is durable in the destination before the
next is read. Interrupted, the same command resumes: ids the destination already holds are skipped. At the
end it checks that both hold the same number of items and that a sample of searches (the sources' own vectors as
queries) finds the same top ids with the same scores; a mismatch exits with status 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from index.backends import open_gallery
from index.protocol import Gallery

BATCH = 1000
SAMPLE = 20  # searches compared at the end
K = 10
SCORE_TOLERANCE = 1e-4  # float32 inner products from two engines


@dataclass
class CopyReport:
    source: str
    destination: str
    copied: int = 0
    skipped: int = 0  # already in the destination (a resumed copy)
    source_count: int = 0
    destination_count: int = 0
    searches_checked: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.source_count == self.destination_count and not self.mismatches


def copy_items(src: Gallery, dst: Gallery, *, batch: int = BATCH, progress: bool = False) -> tuple[int, int]:
    """Every item of src into dst under its id; returns (copied, skipped because dst already held the id)."""
    copied = skipped = 0
    after = 0
    with tqdm(total=len(src), unit="item", disable=not progress, desc="copy") as bar:
        while True:
            ids, xb, records = src.scan(after, batch)
            if not len(ids):
                break
            after = int(ids[-1])
            held = dst.records(ids.tolist())
            fresh = [i for i, gid in enumerate(ids) if int(gid) not in held]
            if fresh:
                dst.import_items(ids[fresh].tolist(), xb[fresh], [records[i] for i in fresh], model_id=src.model_id)
            copied += len(fresh)
            skipped += len(ids) - len(fresh)
            bar.update(len(ids))
    return copied, skipped


def verify(src: Gallery, dst: Gallery, report: CopyReport, *, sample: int = SAMPLE, seed: int = 0) -> None:
    """Counts, then the top K of ``sample`` searches (stored vectors as queries) on both sides."""
    report.source_count = int(src.stats()["count"])
    report.destination_count = int(dst.stats()["count"])
    if report.source_count != report.destination_count:
        report.mismatches.append(f"counts differ: {report.source_count} vs {report.destination_count}")
    ids, xq, _ = src.scan(0, max(sample * 10, 1))
    if not len(ids):
        return
    rng = np.random.default_rng(seed)
    xq = xq[rng.choice(len(ids), size=min(sample, len(ids)), replace=False)]
    k = min(K, report.source_count)
    for row, (a, b) in enumerate(
        zip(src.search(xq, k, model_id=src.model_id), dst.search(xq, k, model_id=dst.model_id), strict=True)
    ):
        report.searches_checked += 1
        a_scores = np.array([h.score for h in a])
        b_scores = np.array([h.score for h in b])
        same_ids = [h.id for h in a] == [h.id for h in b]
        # Equal scores may come in either order: then the ids agree as sets and the scores line up.
        tied_ok = {h.id for h in a} == {h.id for h in b} and np.allclose(a_scores, b_scores, atol=SCORE_TOLERANCE)
        if len(a) != len(b) or not (same_ids or tied_ok) or not np.allclose(a_scores, b_scores, atol=SCORE_TOLERANCE):
            report.mismatches.append(f"search {row}: {[h.id for h in a]} vs {[h.id for h in b]}")


def copy_gallery(
    source: str,
    destination: str,
    *,
    factory: str | None = None,
    batch: int = BATCH,
    sample: int = SAMPLE,
    progress: bool = False,
) -> CopyReport:
    report = CopyReport(source=str(source), destination=str(destination))
    with open_gallery(source, readonly=True) as src:
        dst_factory = factory or src.factory
        with open_gallery(destination, model_id=src.model_id, dim=src.dim, factory=dst_factory) as dst:
            report.copied, report.skipped = copy_items(src, dst, batch=batch, progress=progress)
            verify(src, dst, report, sample=sample)
    return report


if __name__ == "__main__":
    from index.cli import copy_main

    raise SystemExit(copy_main())
