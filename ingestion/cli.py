"""The command lines of ingestion: ``python -m ingestion.bulk``, ``python -m ingestion.reembed`` (also run by
``reid index --gallery`` and ``reid gallery reembed`` as child processes) and ``python -m ingestion.link``. They
parse arguments, build the typed arguments of ingestion.bulk, ingestion.ray_bulk, ingestion.reembed and
ingestion.linking, and print their summaries.

    python -m ingestion.bulk FOLDER --gallery DIR --artifact DIR [--keep-crops] [--ray [ADDRESS]]
    python -m ingestion.reembed --artifact artifacts/new --to galleries/new [--from galleries/live]
    python -m ingestion.link --gallery DIR|URI [--topology F] [--far R] [--full]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from embedders.base import create_embedder
from index import open_gallery
from index.crops import DEFAULT_MAX_BYTES, CropStore, CropStoreFull, crops_folder
from index.errors import GalleryError
from ingestion import bulk, reembed

# -- python -m ingestion.bulk ----------------------------------------------------------------------------------


def parse_bulk_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingestion.bulk", description=bulk.__doc__.split("\n\n")[0])
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
        help="embed on Ray actors (ingestion.ray_bulk; this process reads and decodes); no ADDRESS starts a local Ray in "
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


async def _run_bulk(args: argparse.Namespace) -> bulk.Summary:
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
                    workers=args.workers,
                    layout=args.layout,
                    progress=not args.no_progress and sys.stderr.isatty(),  # logs get the summary only
                    crops=crops,
                )
            return await bulk.index_folder(
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


def bulk_main(argv: Sequence[str] | None = None) -> int:
    args = parse_bulk_args(argv)
    try:
        if args.ray is None:
            summary = asyncio.run(_run_bulk(args))
        else:
            from ingestion.ray_bulk import ray_session

            with ray_session(args.ray):
                summary = asyncio.run(_run_bulk(args))
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
    if summary.failed:  # the others were added; the exit status says not all were
        print(f"ingestion.bulk: {summary.failed} image(s) could not be added (named above)", file=sys.stderr)
        return 1
    if summary.indexed + summary.duplicates == 0:
        print(f"ingestion.bulk: nothing was added: no image in {args.folder}", file=sys.stderr)
        return 1
    return 0


# -- python -m ingestion.reembed --------------------------------------------------------------------------------


def parse_reembed_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingestion.reembed", description=reembed.__doc__.split("\n\n")[0])
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
    p.add_argument("--batch-size", type=int, default=reembed.SCAN_BATCH)
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


async def _run_reembed(args: argparse.Namespace) -> reembed.Summary:
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
                summary = await reembed.reembed(
                    source,
                    dst,
                    embedder,
                    crops,
                    dst_crops=dst_crops,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    progress=not args.no_progress and sys.stderr.isatty(),
                )
                summary.neighbours = await asyncio.to_thread(reembed.neighbour_changes, source, dst)
                # Content-addressed, so a destination without a crops folder of its own can share the source's.
                summary.crops_dir = str((dst_crops or crops).root)
        return summary
    finally:
        await embedder.close()


def reembed_main(argv: Sequence[str] | None = None) -> int:
    args = parse_reembed_args(argv)
    try:
        summary = asyncio.run(_run_reembed(args))
    except GalleryError as exc:  # another model in the destination, no crops, a locked or corrupt gallery
        print(f"reembed: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


# -- python -m ingestion.link -----------------------------------------------------------------------------------


def parse_link_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from ingestion import linking

    p = argparse.ArgumentParser(prog="python -m ingestion.link", description=linking.__doc__.split("\n\n")[0])
    p.add_argument(
        "--gallery",
        default=os.environ.get("REID_GALLERY_URI") or os.environ.get("REID_GALLERY_DIR"),
        help="gallery folder, Milvus Lite .db file or milvus://HOST:PORT/COLLECTION (default: REID_GALLERY_URI, "
        "else REID_GALLERY_DIR). An embedded gallery has one writer: while a server holds it, link through the server "
        "(POST /v1/identities/link)",
    )
    p.add_argument(
        "--topology", type=Path, help="camera topology, JSON or YAML (default: learned from confident links)"
    )
    p.add_argument("--far", type=float, default=linking.DEFAULT_FAR, help="false-link rate the threshold is set for")
    p.add_argument("--threshold", type=float, help="link at this similarity instead of a calibrated one")
    p.add_argument("--full", action="store_true", help="relink every track (default: only tracks without an identity)")
    p.add_argument("--linkage", choices=["average", "complete"], default="average")
    p.add_argument("--json", action="store_true", help="print the run as JSON")
    args = p.parse_args(argv)
    if args.gallery is None:
        p.error("give --gallery (or set REID_GALLERY_URI / REID_GALLERY_DIR)")
    if not 0 < args.far < 1:
        p.error("--far takes a rate between 0 and 1")
    return args


def link_main(argv: Sequence[str] | None = None) -> int:
    from index.errors import GalleryLocked
    from ingestion.link import load_topology
    from ingestion.linking import link_gallery

    args = parse_link_args(argv)
    try:
        topology = None if args.topology is None else load_topology(args.topology)
    except (OSError, ValueError) as exc:
        print(f"ingestion.link: the topology {args.topology} cannot be read: {exc}", file=sys.stderr)
        return 2
    try:
        with open_gallery(args.gallery) as gallery:
            run = link_gallery(
                gallery, far=args.far, topology=topology, full=args.full, threshold=args.threshold, linkage=args.linkage
            )
    except GalleryLocked as exc:
        print(
            f"ingestion.link: {exc} (the server holds it: link through it with POST /v1/identities/link, or stop it)",
            file=sys.stderr,
        )
        return 2
    except GalleryError as exc:
        print(f"ingestion.link: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(run.to_dict(), indent=2) if args.json else run.format())
    return 0
