"""The `reid` command line: search, add, rm, stats and index through the API; serve starts the API.

The server side (``reid serve``, ``reid index --gallery``) runs as child processes (uvicorn, embedders.local_triton,
ingestion.bulk), so the client package never imports server code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from client.api import DEFAULT_URL, ReIDClient
from client.errors import ReIDError
from client.launch import serve
from client.messages import JUNK, UsageError, artifact, existing, explain, gallery_location, labels_of, parse_metadata
from client.models import AddResult, SearchResult
from formats.names import is_image_file


def _client(args: argparse.Namespace) -> ReIDClient:
    return ReIDClient(args.url, api_key=args.api_key, timeout=args.timeout)


def _print_search(result: SearchResult) -> None:
    t = result.timings
    verdict = result.verdict or "n/a (the model has no calibrated threshold)"
    threshold = f" (threshold {result.threshold:.3f})" if result.threshold is not None else ""
    print(f"verdict: {verdict}{threshold}   model: {result.model_id}")
    if (c := result.calibration) is not None:
        if c.far is not None:
            print(
                f"operating point: FAR {c.far:g} (target {result.target_far:g}), DIR {c.dir:.3f}, measured FAR "
                f"{c.measured_far:.4f}, from the {c.source} ({c.method}, {c.gallery_identities} identities, "
                f"{c.gallery_crops} crops)"
            )
        if c.note:
            print(f"note: {c.note}")
    print(f"timings: decode {t.decode_ms:.1f} ms, embed {t.embed_ms:.1f} ms, search {t.search_ms:.1f} ms")
    for name, values in result.unmatched_filters.items():
        print(f"note: no gallery item has these {name}: {', '.join(values)}")
    print("\nidentities")
    print(f"  {'rank':>4}  {'person':<12} {'score':>7} {'hits':>5} {'best id':>8}")
    for rank, identity in enumerate(result.identities, 1):
        print(f"  {rank:>4}  {identity.person_id:<12} {identity.score:>7.4f} {identity.count:>5} {identity.best_id:>8}")
    print("\nhits")
    print(f"  {'rank':>4}  {'id':>8} {'person':<12} {'camera':<8} {'score':>7}")
    for rank, hit in enumerate(result.hits, 1):
        print(f"  {rank:>4}  {hit.id:>8} {hit.person_id or '-':<12} {hit.camera_id or '-':<8} {hit.score:>7.4f}")


def cmd_search(args: argparse.Namespace) -> int:
    with _client(args) as reid:
        result = reid.search(args.image, top_k=args.k, query_camera=args.query_camera, cameras=args.camera or None)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        _print_search(result)
    if args.show is not None:
        from client.show import show  # matplotlib and Pillow load only for a picture

        path = show(args.url, args.api_key, args.timeout, args.image, result, args.show, args.crops)
        print(f"picture: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _report_refused(result: AddResult, paths: Sequence[Path]) -> int:
    """Name each file the server refused, and why; how many."""
    refused = 0
    for item, path in zip(result.items, paths, strict=True):
        if item.error is not None:
            print(f"refused {path}: {item.reason}", file=sys.stderr)
            refused += 1
    return refused


def cmd_add(args: argparse.Namespace) -> int:
    metadata = parse_metadata(args.metadata)
    for path in args.images:
        existing(path, "the image")
    print(f"reid add: {len(args.images)} image(s) of {args.person} -> {args.url}", file=sys.stderr)
    with _client(args) as reid:
        result = reid.add(args.images, args.person, camera_id=args.camera, metadata=metadata)
    for item, path in zip(result.items, args.images, strict=True):
        if item.error is None:
            print(f"{item.id}\t{path}{'  (duplicate)' if item.duplicate else ''}")
    return 1 if _report_refused(result, args.images) else 0


def cmd_rm(args: argparse.Namespace) -> int:
    print(f"reid rm: {len(args.ids)} item(s) from {args.url}", file=sys.stderr)
    with _client(args) as reid:
        for item_id in args.ids:
            reid.delete(item_id)
            print(f"removed {item_id}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as reid:
        stats = reid.stats()
        readiness = reid.ready()
    if args.json:
        print(json.dumps({**asdict(stats), "ready": readiness.ready, "reason": readiness.reason}, indent=2))
        return 0
    print(f"gallery: {stats.count} images, model {stats.model_id}, dim {stats.dim}, index {stats.index_type}")
    print(f"ready:   {'yes' if readiness.ready else 'no: ' + readiness.reason}")
    return 0


def _images_in(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if is_image_file(path) and path.is_file():
            yield path


def cmd_gallery_copy(args: argparse.Namespace) -> int:
    # A child process, as `reid index --gallery`: the client package never imports the gallery's code.
    gallery_location(args.source, "the source gallery")
    print(f"reid gallery copy: {args.source} -> {args.destination}", file=sys.stderr)
    command = [sys.executable, "-m", "index.copy", args.source, args.destination]
    command += ["--batch", str(args.batch), "--sample", str(args.sample)]
    if args.factory:
        command += ["--factory", args.factory]
    return subprocess.call(command)


def _index_with_bulk(args: argparse.Namespace) -> int:
    """Straight into a gallery folder (no server): the same code path as `make index`, as a child process."""
    if args.artifact is None:
        raise UsageError("reid index --gallery needs --artifact (the model that embeds the crops)")
    artifact(args.artifact)
    print(f"reid index: {args.folder} -> gallery {args.gallery} (model {args.artifact}, no server)", file=sys.stderr)
    command = [sys.executable, "-m", "ingestion.bulk", str(args.folder), "--gallery", str(args.gallery)]
    command += ["--artifact", str(args.artifact)]
    if args.ray is not None:
        command += ["--ray", args.ray]
    if args.keep_crops:
        command += ["--keep-crops"]
    return subprocess.call(command)


def cmd_index(args: argparse.Namespace) -> int:
    if args.ray is not None and args.gallery is None:
        raise UsageError("reid index --ray needs --gallery (Ray writes straight into a gallery, not through the API)")
    if args.keep_crops and args.gallery is None:
        raise UsageError(
            "reid index --keep-crops needs --gallery (through the API, the server keeps crops when it runs with "
            "REID_KEEP_CROPS=true)"
        )
    if not existing(args.folder, "the folder").is_dir():
        raise UsageError(f"{args.folder} is not a folder")
    if args.gallery is not None:
        return _index_with_bulk(args)
    print(f"reid index: {args.folder} -> {args.url}", file=sys.stderr)
    counts = {"added": 0, "duplicates": 0, "junk": 0, "skipped": 0, "refused": 0}
    batch: list[tuple[Path, str, str | None]] = []

    def flush(reid: ReIDClient) -> None:
        if batch:
            paths, people, cameras = zip(*batch, strict=True)
            result = reid.add(list(paths), list(people), camera_id=list(cameras))
            counts["added"] += result.added
            counts["duplicates"] += result.duplicates
            counts["refused"] += _report_refused(result, paths)
            batch.clear()

    with _client(args) as reid:
        for path in _images_in(args.folder):
            labels = labels_of(path, args.person, args.camera)
            if labels == JUNK:  # a data set's deliberate junk crops: counted, not named one by one
                counts["junk"] += 1
                continue
            if isinstance(labels, str):
                print(f"skipped {path}: {labels}", file=sys.stderr)
                counts["skipped"] += 1
                continue
            batch.append((path, labels[0], labels[1] or ""))
            if len(batch) >= args.batch:
                flush(reid)
        flush(reid)
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    if counts["added"] + counts["duplicates"] == 0:
        print(f"reid index: nothing was added from {args.folder} (no usable image in it)", file=sys.stderr)
        return 1
    return 1 if counts["refused"] or counts["skipped"] else 0


def cmd_gallery_reembed(args: argparse.Namespace) -> int:
    # The gallery work happens in ingestion.reembed, a child process: the client package never imports it.
    artifact(args.artifact)
    if args.source is not None:
        gallery_location(args.source, "the source gallery (--from)")
    print(f"reid gallery reembed: {args.source or 'REID_GALLERY_URI / REID_GALLERY_DIR'} -> {args.to}", file=sys.stderr)
    command = [sys.executable, "-m", "ingestion.reembed", "--artifact", str(args.artifact), "--to", args.to]
    for flag, value in (("--from", args.source), ("--crops", args.crops), ("--to-crops", args.to_crops)):
        if value is not None:
            command += [flag, str(value)]
    if args.factory:
        command += ["--factory", args.factory]
    if args.summary_json is not None:
        command += ["--summary-json", str(args.summary_json)]
    if args.no_progress:
        command.append("--no-progress")
    return subprocess.call(command)


def cmd_calibrate(args: argparse.Namespace) -> int:
    # Reads and writes the gallery itself (no server): index.calibrate runs as a child, as ingestion.bulk does.
    gallery_location(args.gallery, "the gallery")
    print(f"reid calibrate: gallery {args.gallery}", file=sys.stderr)
    command = [sys.executable, "-m", "index.calibrate", str(args.gallery), "--far", *map(str, args.far)]
    command += ["--top-k", str(args.top_k)]
    command += ["--dry-run"] * args.dry_run + ["--json"] * args.json
    return subprocess.call(command)


def cmd_link(args: argparse.Namespace) -> int:
    # Reads and writes the gallery itself (no server): ingestion.link runs as a child, as ingestion.bulk does.
    if args.gallery is not None:
        gallery_location(args.gallery, "the gallery")
    command = [sys.executable, "-m", "ingestion.link", "--far", str(args.far)]
    command += ["--gallery", args.gallery] * (args.gallery is not None) + ["--full"] * args.full
    command += ["--topology", str(args.topology)] * (args.topology is not None) + ["--json"] * args.json
    return subprocess.call(command)


def cmd_timeline(args: argparse.Namespace) -> int:
    from client import timeline  # matplotlib only when a picture is drawn (inside timeline.draw)

    with _client(args) as reid:
        found = reid.identity(args.identity_id)
    print("\n".join(timeline.lines(found)))
    if args.show is not None:
        out = timeline.show(args.url, args.api_key, args.timeout, found, args.show, args.crops)
        print(f"picture: {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.triton and args.artifact is None:
        raise UsageError("reid serve --triton needs --artifact (its model repository is served)")
    if args.artifact is not None:
        artifact(args.artifact)
    # SIGTERM (docker stop, systemd) unwinds like Ctrl-C, so the children are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with serve(
            artifact=args.artifact,
            gallery=args.gallery,
            triton=args.triton,
            host=args.host,
            port=args.port,
            triton_port=args.triton_port,
            create_gallery=args.create_gallery,
        ) as api:
            return api.wait()
    except KeyboardInterrupt:
        return 0


def _add_search_command(sub: argparse._SubParsersAction) -> None:
    """reid search IMAGE: the identities matching a crop."""
    p = sub.add_parser("search", help="find the identities matching a person crop")
    p.add_argument("image", type=Path)
    p.add_argument("-k", type=int, default=10, help="hits to return (at most 100)")
    p.add_argument("--query-camera", help="drop matches from this camera (Market-1501 protocol)")
    p.add_argument("--camera", action="append", help="only hits from this camera (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--show", type=Path, metavar="PNG", help="also draw the query and its hits into this picture")
    p.add_argument(
        "--crops", type=Path, metavar="DIR", help="with --show, when the server keeps no crops: the indexed folder"
    )
    p.set_defaults(run=cmd_search)


def _add_add_command(sub: argparse._SubParsersAction) -> None:
    """reid add IMAGES --person P: crops of one person into the gallery."""
    p = sub.add_parser("add", help="add crops of one person to the gallery")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--person", required=True)
    p.add_argument("--camera")
    p.add_argument("--metadata", help="a JSON object stored with each image")
    p.set_defaults(run=cmd_add)


def _add_rm_command(sub: argparse._SubParsersAction) -> None:
    """reid rm IDS."""
    p = sub.add_parser("rm", help="remove gallery items by id")
    p.add_argument("ids", nargs="+", type=int)
    p.set_defaults(run=cmd_rm)


def _add_stats_command(sub: argparse._SubParsersAction) -> None:
    """reid stats."""
    p = sub.add_parser("stats", help="gallery size, model and readiness")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_stats)


def _add_index_command(sub: argparse._SubParsersAction) -> None:
    """reid index FOLDER: through the API, or straight into a gallery with --gallery."""
    p = sub.add_parser("index", help="add every crop of a folder (Market-1501 names give person and camera)")
    p.add_argument("folder", type=Path)
    p.add_argument(
        "--gallery",
        help="write straight into this gallery (no server) via ingestion.bulk: a folder, a Milvus Lite .db file "
        "or milvus://HOST:PORT/COLLECTION (kept as given: a Path would fold the URI's //)",
    )
    p.add_argument("--artifact", type=Path, help="model artifact for --gallery")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="with --gallery: read, decode and embed on Ray (a local Ray, or 'auto' / ray://HOST:10001)",
    )
    p.add_argument(
        "--keep-crops",
        action="store_true",
        help="with --gallery: keep each added file's bytes (REID_CROPS_DIR, else <gallery>/crops) for the API's "
        "images and reid gallery reembed",
    )
    p.add_argument("--person", help="person id for files without a Market-1501 name")
    p.add_argument("--camera", help="camera id for files without a Market-1501 name")
    p.add_argument("--batch", type=int, default=16, help="images per request")
    p.set_defaults(run=cmd_index)


def _add_gallery_command(sub: argparse._SubParsersAction) -> None:
    """reid gallery reembed | copy: galleries worked on directly, no server."""
    gallery = sub.add_parser("gallery", help="work on gallery folders or collections directly (no server)")
    gallery_sub = gallery.add_subparsers(dest="gallery_command", required=True)
    p = gallery_sub.add_parser(
        "reembed", help="build a gallery for a new model from the kept crops of another (ingestion.reembed)"
    )
    p.add_argument("--artifact", type=Path, required=True, help="the new model's artifact folder")
    p.add_argument("--to", required=True, help="destination gallery: folder, milvus://HOST:PORT/NAME or .db")
    p.add_argument("--from", dest="source", help="source gallery (default: REID_GALLERY_URI / REID_GALLERY_DIR)")
    p.add_argument("--crops", type=Path, help="the source's kept crops (default: REID_CROPS_DIR or <from>/crops)")
    p.add_argument("--to-crops", type=Path, help="where the destination keeps crops (default: <to>/crops)")
    p.add_argument("--factory", help="faiss index type of a new destination (default: the source's)")
    p.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal)")
    p.set_defaults(run=cmd_gallery_reembed)
    p = gallery_sub.add_parser(
        "copy", help="copy a gallery to another backend or place, ids kept; resumable, verified (index.copy)"
    )
    p.add_argument("source", help="gallery folder, milvus://HOST:PORT/COLLECTION or a Milvus Lite .db file")
    p.add_argument("destination", help="the same forms; created if missing, resumed if a copy was interrupted")
    p.add_argument("--factory", help="index type of a new destination (default: the source's)")
    p.add_argument("--batch", type=int, default=1000, help="items per batch")
    p.add_argument("--sample", type=int, default=20, help="searches compared between the two at the end")
    p.set_defaults(run=cmd_gallery_copy)


def _add_calibrate_command(sub: argparse._SubParsersAction) -> None:
    """reid calibrate GALLERY: the verdict's thresholds from the gallery's own people."""
    p = sub.add_parser(
        "calibrate",
        help="measure the verdict's thresholds on the gallery's own people (leave one identity out) and store them "
        "in the gallery; stop the server first",
    )
    p.add_argument("gallery", help="gallery folder, Milvus Lite .db file or milvus:// URI (REID_GALLERY_DIR)")
    p.add_argument("--far", type=float, nargs="+", default=[0.01], help="identity-level false-alarm rates")
    p.add_argument("--top-k", type=int, default=10, help="hits aggregated per search (the server's default)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_calibrate)


def _add_link_command(sub: argparse._SubParsersAction) -> None:
    """reid link: tracks into identities (ingestion.link), on the gallery itself."""
    p = sub.add_parser(
        "link", help="link the gallery's tracks into identities across cameras (ingestion.link); stop the server first"
    )
    p.add_argument("--gallery", help="gallery folder, Milvus Lite .db file or milvus:// URI (REID_GALLERY_URI/DIR)")
    p.add_argument("--topology", type=Path, help="camera pairs with transit seconds, JSON or YAML (default: learned)")
    p.add_argument("--far", type=float, default=0.01, help="false-link rate the threshold is set for")
    p.add_argument("--full", action="store_true", help="relink every track (default: tracks without an identity)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_link)


def _add_timeline_command(sub: argparse._SubParsersAction) -> None:
    """reid timeline ID: where and when a person was seen."""
    p = sub.add_parser("timeline", help="a person's timeline: their tracks by camera and time (GET /v1/identities/ID)")
    p.add_argument("identity_id", type=int, help="the identity (reid link, GET /v1/identities)")
    p.add_argument("--show", type=Path, metavar="OUT.png", help="also draw the tracks' best crops with their times")
    p.add_argument("--crops", type=Path, help="the indexed folder, for crops the server did not keep")
    p.set_defaults(run=cmd_timeline)


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    """reid serve: the API, and a local Triton with --triton."""
    p = sub.add_parser("serve", help="start the API (and, with --triton, a local Triton server)")
    p.add_argument("--artifact", type=Path, help="exported model folder (REID_ARTIFACT)")
    p.add_argument("--gallery", type=Path, help="gallery folder (REID_GALLERY_DIR)")
    p.add_argument("--triton", action="store_true", help="serve the model from a local Triton instead of in-process")
    p.add_argument(
        "--create-gallery",
        action="store_true",
        help="start a new, empty gallery where --gallery names none (REID_CREATE_GALLERY); else a missing one is "
        "refused",
    )
    p.add_argument("--triton-port", type=int, default=8010, help="Triton HTTP port; gRPC and metrics use the next two")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(run=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid", description="Person re-identification retrieval: the API's CLI.")
    parser.add_argument("--url", default=os.environ.get("REID_URL", DEFAULT_URL), help="API base URL (REID_URL)")
    parser.add_argument("--api-key", default=os.environ.get("REID_API_KEY"), help="API key (REID_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search_command(sub)
    _add_add_command(sub)
    _add_rm_command(sub)
    _add_stats_command(sub)
    _add_index_command(sub)
    _add_gallery_command(sub)
    _add_calibrate_command(sub)
    _add_link_command(sub)
    _add_timeline_command(sub)
    _add_serve_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ReIDError, OSError, ValueError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"reid {args.command}: {explain(exc, args.url)}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
