"""Bulk indexing benchmark: images/s of a whole folder into a gallery beside pure embedding images/s.

    python -m benchmarks.bulk --artifact artifacts/demo --images data/synth/bounding_box_test --out bench/bulk.json

The gap between the two is what decoding, hashing and the gallery's log cost on top of the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedders.base import create_embedder
from formats.images import load_image
from index.gallery import Gallery
from ingestion.bulk import index_folder, walk_folder


def bench_bulk(artifact: Path, images: Path, folder: Path) -> dict:
    """Bulk indexing images/s beside pure embedding images/s (same decoded batches, ONNX Runtime)."""

    async def run() -> dict:
        embedder = create_embedder("onnx", artifact=artifact)
        await embedder.start()
        try:
            spec = embedder.spec
            items, _ = walk_folder(images)
            pixels = np.stack(
                [load_image(str(images / it.rel), spec.input.height, spec.input.width) for it in items[:256]]
            )
            await embedder.embed(pixels[:8])  # warm-up
            t0 = time.perf_counter()
            for start in range(0, len(pixels), 64):
                await embedder.embed(pixels[start : start + 64])
            embed_ips = len(pixels) / (time.perf_counter() - t0)
            with Gallery.create(folder / "bulk", model_id=spec.model_id, dim=spec.dim) as g:
                summary = await index_folder(images, g, embedder, batch_size=64)
            return {
                "artifact": str(artifact),
                "images": summary.indexed,
                "skipped": len(summary.skipped),
                "bulk_images_per_s": round(summary.images_per_s, 1),
                "embed_only_images_per_s": round(embed_ips, 1),
                "input": [spec.input.height, spec.input.width],
            }
        finally:
            await embedder.close()

    result = asyncio.run(run())
    print(json.dumps({"bulk": result}), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, required=True, help="artifact folder with model.onnx")
    p.add_argument("--images", type=Path, required=True, help="folder of crops to index")
    p.add_argument("--workdir", type=Path, default=None, help="where the gallery is built (default: a temp dir)")
    p.add_argument("--out", type=Path, default=Path("bench/bulk.json"))
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bulk-bench-", dir=args.workdir))
    try:
        report = {
            "command": " ".join(["python -m benchmarks.bulk", *(argv if argv is not None else sys.argv[1:])]),
            "host": {"cpus": len(os.sched_getaffinity(0)), "machine": platform.machine()},
            "bulk": bench_bulk(args.artifact, args.images, folder),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
