"""python -m ingestion.video SOURCE --gallery DIR|URI --artifact A --detector D --camera NAME [options]

Index a video file or a stream (rtsp://, http://, a camera index) as people tracks: the detector finds people,
ByteTrack follows them, the best crops of each track are embedded and stored with camera, time, track, frame and
box. A stream runs until Ctrl-C (or SIGTERM); the tracks still open are written before it exits.

Exit status: 0 people were stored; 1 the video broke off early (what was read is stored); 2 the source, the
detector or an argument was refused; 3 no person was found (nothing stored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from embedders.base import create_embedder
from embedders.detector import DetectorError, create_detector
from index import open_gallery
from index.crops import DEFAULT_MAX_BYTES, CropStore, CropStoreFull, crops_folder
from index.errors import GalleryError
from ingestion.pipeline import WritePipeline
from ingestion.video import CropSettings, VideoError, VideoOptions, VideoSummary, index_video


def _iso(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r} (e.g. 2026-12-07T14:02:00+01:00)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingestion.video", description=__doc__.split("\n\n")[1])
    p.add_argument("source", help="video file, or stream URL (rtsp://, http(s)://) or camera index")
    p.add_argument("--gallery", required=True, help="gallery folder, Milvus Lite .db file or milvus://HOST:PORT/NAME")
    p.add_argument("--artifact", type=Path, help="embedder artifact folder (onnx backend)")
    p.add_argument("--backend", choices=["onnx", "triton"], default="onnx")
    p.add_argument("--triton-url", help="Triton address (triton backend)")
    p.add_argument("--model-name", help="Triton model name (triton backend)")
    p.add_argument("--detector", required=True, help="detector artifact folder (make detector), .onnx, or 'motion'")
    p.add_argument("--camera", required=True, help="camera id stored with every crop")
    p.add_argument("--start", type=_iso, help="ISO-8601 time of the first frame (default: file mtime less its length)")
    p.add_argument("--every", type=int, default=1, help="analyse one frame in N")
    p.add_argument("--max-frames", type=int, help="stop after this many source frames")
    p.add_argument("--max-crops-per-track", type=int, default=CropSettings.max_crops, help="crops stored per track")
    p.add_argument("--min-height", type=int, default=CropSettings.min_height, help="smallest person stored (pixels)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per gallery write")
    p.add_argument("--factory", default="Flat", help="faiss index type when the gallery is created")
    p.add_argument("--keep-crops", action="store_true", help="keep each stored crop's JPEG in the crop store")
    p.add_argument("--crops-dir", type=Path, help="crop store (default: REID_CROPS_DIR, else <gallery>/crops)")
    p.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none unless on a terminal)")
    args = p.parse_args(argv)
    if args.backend == "onnx" and args.artifact is None:
        p.error("the onnx backend needs --artifact")
    if args.backend == "triton" and args.triton_url is None:
        p.error("the triton backend needs --triton-url")
    if min(args.every, args.max_crops_per_track, args.batch_size, args.min_height) < 1:
        p.error("--every, --max-crops-per-track, --batch-size and --min-height must be at least 1")
    if args.keep_crops:
        try:
            args.crops_dir = crops_folder(args.gallery, args.crops_dir or os.environ.get("REID_CROPS_DIR") or None)
        except ValueError as exc:
            p.error(str(exc))
        if args.crops_dir is None:
            p.error("--keep-crops with a Milvus gallery needs --crops-dir")
    return args


async def _run(args: argparse.Namespace, stop: threading.Event) -> VideoSummary:
    detector = create_detector(args.detector)
    detector.start()  # before the embedder and the gallery: a wrong detector is refused before anything is opened
    embedder = create_embedder(
        args.backend,
        artifact=args.artifact,
        triton_url=args.triton_url,
        model_name=args.model_name,
    )
    await embedder.start()
    options = VideoOptions(
        camera_id=args.camera,
        start=args.start,
        every=args.every,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        crops=CropSettings(max_crops=args.max_crops_per_track, min_height=args.min_height),
    )
    try:
        spec = embedder.spec
        cap = int(os.environ.get("REID_CROPS_MAX_BYTES") or DEFAULT_MAX_BYTES)
        crops = CropStore.open(args.crops_dir, cap) if args.keep_crops else None
        with open_gallery(args.gallery, model_id=spec.model_id, dim=spec.dim, factory=args.factory) as gallery:
            pipeline = WritePipeline(gallery, embedder, crops=crops)
            progress = not args.no_progress and sys.stderr.isatty()
            return await index_video(args.source, pipeline, detector, options, progress=progress, stop=stop)
    finally:
        await embedder.close()
        detector.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop reading; the open tracks are still written
        signal.signal(sig, lambda *_: stop.set())
    try:
        summary = asyncio.run(_run(args, stop))
    except (VideoError, DetectorError) as exc:
        print(f"ingestion.video: {exc}", file=sys.stderr)
        return 2
    except (CropStoreFull, GalleryError) as exc:
        print(f"ingestion.video: stopped: {exc} (tracks written before this stay)", file=sys.stderr)
        return 1
    print(summary.format())
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    if summary.truncated or summary.error:
        return 1
    if summary.crops + summary.duplicates == 0:
        print(f"ingestion.video: no person found in {summary.frames} frames: nothing stored", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
