"""Footage benchmark on a real video: speed per stage, track coverage, and search by a crop that was not stored.

    python -m benchmarks.video --video /usr/share/doc/opencv-doc/examples/data/vtest.avi \
        --detector artifacts/detector --artifact artifacts/demo --out bench/video.json [--picture tracks.png]

1. Speed: the detector alone (frames/s on decoded frames), ByteTrack alone (on the detector's recorded boxes),
   the embedder alone (crops/s), and ``python -m ingestion.video``'s own run (end-to-end frames/s, seconds per
   stage; the stages overlap in time on their threads, so their shares are of the summed stage time).
2. Coverage: the fraction of the detector's confident person boxes (score >= --cover-score, at least the smallest
   stored height) that belong to a stored track.
3. Held-out search: the video is indexed with crops taken from even frames only (``every`` 2); for each stored
   track, a crop of the same person cut from an odd frame (never stored; the tracker replayed on all frames says
   whose box it is) is searched in the gallery. Hits are grouped by track (the best hit's score); reported: how
   often the person's own track comes first, and whether the query's time falls in that track's time span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from benchmarks.tracking import VARIANTS
from embedders.base import create_embedder
from embedders.detector import Detector, create_detector
from formats.detections import Boxes, box_iou
from formats.images import decode_image, resize
from index import open_gallery
from ingestion.pipeline import WritePipeline
from ingestion.video import CropSettings, VideoOptions, index_video
from ingestion.video.tracking import PeopleTracker, TrackerSettings, track_id, track_key


def read_frames(video: Path, limit: int | None) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while limit is None or len(frames) < limit:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, fps


def detect_all(detector: Detector, frames: list[np.ndarray]) -> tuple[list[Boxes], float]:
    detector.start()
    started = time.perf_counter()
    boxes = [detector.detect(f) for f in frames]
    return boxes, time.perf_counter() - started


def replay_tracks(
    boxes: list[Boxes], fps: float, every: int = 1, settings: TrackerSettings | None = None
) -> tuple[dict[int, dict[int, tuple]], float]:
    """ByteTrack over recorded boxes of every ``every``-th frame: local id -> frame -> (xyxy, score)."""
    tracker = PeopleTracker(fps / every, settings or TrackerSettings())
    tracks: dict[int, dict[int, tuple]] = defaultdict(dict)
    started = time.perf_counter()
    for index in range(0, len(boxes), every):
        for t in tracker.update(boxes[index]):
            tracks[t.local_id][index] = (t.xyxy, t.score)
    return tracks, time.perf_counter() - started


class Recorded(Detector):
    """Answers from boxes detected before (so an indexing run costs no second detection of the same frames)."""

    name = "recorded"

    def __init__(self, boxes: list[Boxes], every: int) -> None:
        self.boxes, self.every, self.calls = boxes, every, 0

    def detect(self, frame: np.ndarray) -> Boxes:
        boxes = self.boxes[self.calls * self.every]
        self.calls += 1
        return boxes


async def _index(video: Path, gallery_dir: Path, artifact: Path, detector: Detector, options: VideoOptions):
    detector.start()
    embedder = create_embedder("onnx", artifact=artifact)
    await embedder.start()
    try:
        spec = embedder.spec
        with open_gallery(gallery_dir, model_id=spec.model_id, dim=spec.dim) as gallery:
            summary = await index_video(str(video), WritePipeline(gallery, embedder), detector, options)
            records = gallery.records(list(range(1, len(gallery) + 1)))
        return summary, records
    finally:
        await embedder.close()


async def _embed_speed(artifact: Path, crops: list[np.ndarray]) -> float:
    embedder = create_embedder("onnx", artifact=artifact, micro_batch=False)
    await embedder.start()
    try:
        h, w = embedder.spec.input.height, embedder.spec.input.width
        batch = np.stack([resize(c, h, w) for c in crops])
        await embedder.embed(batch[:1])  # the session's first run allocates: not part of the speed
        started = time.perf_counter()
        await embedder.embed(batch)
        return len(batch) / (time.perf_counter() - started)
    finally:
        await embedder.close()


def coverage(boxes: list[Boxes], records: dict, tracks: dict[int, dict[int, tuple]], key: str, camera: str, s) -> dict:
    """Confident person boxes that a stored track holds (the replayed tracker says which track a box is)."""
    stored = {r.track_id for r in records.values()}
    owner = {}
    for local, frames in tracks.items():
        for index, (xyxy, _) in frames.items():
            owner[(index, tuple(np.round(xyxy, 1)))] = track_id(camera, key, local)
    confident = covered = 0
    for index, b in enumerate(boxes):
        for xyxy, score in zip(b.xyxy, b.scores, strict=True):
            if score < s["score"] or xyxy[3] - xyxy[1] < s["min_height"]:
                continue
            confident += 1
            covered += owner.get((index, tuple(np.round(xyxy, 1)))) in stored
    return {"confident_boxes": confident, "in_stored_tracks": covered, "share": round(covered / max(confident, 1), 3)}


def odd_frame_query(tracks_even: dict[int, tuple], boxes: list[Boxes]) -> tuple[int, np.ndarray] | None:
    """A box of the same person in an odd frame (never analysed with every 2): the detection of frame i + 1 that
    overlaps the track's box of frame i most (IoU >= 0.5: people move little in one frame), mid-track."""
    frames = sorted(tracks_even)
    for i in frames[len(frames) // 2 :] + frames[: len(frames) // 2][::-1]:
        if i + 1 >= len(boxes) or len(boxes[i + 1]) == 0:
            continue
        iou = box_iou(tracks_even[i][0][None], boxes[i + 1].xyxy)[0]
        best = int(iou.argmax())
        candidate = boxes[i + 1].xyxy[best]
        if iou[best] >= 0.5 and candidate[3] - candidate[1] >= CropSettings.min_height:
            return i + 1, candidate
    return None


async def held_out_search(artifact: Path, gallery_dir: Path, frames, boxes, tracks, ids: dict, start: float, fps):
    """Per stored track, one crop from an odd frame (never stored) searched in the gallery, hits grouped by track."""
    embedder = create_embedder("onnx", artifact=artifact)
    await embedder.start()
    rows = []
    try:
        spec = embedder.spec
        with open_gallery(gallery_dir) as gallery:
            spans = defaultdict(list)
            for r in gallery.records(list(range(1, len(gallery) + 1))).values():
                spans[r.track_id].append(r.captured_at)
            for local, track in tracks.items():
                tid, query = ids[local], odd_frame_query(track, boxes)
                if tid not in spans or query is None:
                    continue
                index, (x0, y0, x1, y1) = query[0], (int(round(v)) for v in query[1])
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frames[index][y0:y1, x0:x1], cv2.COLOR_RGB2BGR))
                xq = await embedder.embed(
                    resize(decode_image(jpeg.tobytes()), spec.input.height, spec.input.width)[None]
                )
                best = {}
                for h in gallery.search(xq, 50, model_id=spec.model_id)[0]:
                    best.setdefault(h.record.track_id, h)  # hits come best first: a track's best hit is its score
                ranked = [h.record.track_id for h in sorted(best.values(), key=lambda h: -h.score)]
                t = start + index / fps
                rows.append(
                    {
                        "track": tid,
                        "frame": index,
                        "rank": ranked.index(tid) + 1 if tid in ranked else None,
                        "first": ranked[0] if ranked else None,  # vtest's people come back: often them again
                        "in_span": min(spans[tid]) - 1 / fps <= t <= max(spans[tid]) + 1 / fps,
                    }
                )
    finally:
        await embedder.close()
    n = max(len(rows), 1)
    return {
        "queries": len(rows),
        "own_track_first": round(sum(r["rank"] == 1 for r in rows) / n, 3),
        "own_track_in_top5": round(sum((r["rank"] or 99) <= 5 for r in rows) / n, 3),
        "first_and_time_in_span": round(sum(r["rank"] == 1 and r["in_span"] for r in rows) / n, 3),
        "rows": rows,
    }


def draw_tracks(frame: np.ndarray, tracks: dict[int, dict[int, tuple]], index: int, fps: float, out: Path) -> None:
    """The frame with each live track's box, id and its trail over the last 3 s."""
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    rng = np.random.default_rng(1)
    for local, boxes in sorted(tracks.items()):
        colour = tuple(int(c) for c in rng.integers(60, 256, 3))
        trail = [i for i in sorted(boxes) if index - 3 * fps <= i <= index]
        if index not in boxes:
            continue
        feet = [(int((boxes[i][0][0] + boxes[i][0][2]) / 2), int(boxes[i][0][3])) for i in trail]
        for a, b in zip(feet, feet[1:], strict=False):
            cv2.line(image, a, b, colour, 2)
        x0, y0, x1, y1 = (int(v) for v in boxes[index][0])
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, 2)
        cv2.putText(image, f"#{local}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), image)


def track_quality(args, frames, boxes, fps: float, settings: TrackerSettings, work: Path) -> dict:
    """Coverage and held-out search of one tracker setting, over the detector's recorded boxes."""
    camera, start = "bench", datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    key = track_key(camera, str(args.video), start)
    tracks, _ = replay_tracks(boxes, fps, settings=settings)
    options = VideoOptions(camera, start, max_frames=len(frames), tracker=settings)
    _, records = asyncio.run(_index(args.video, work / "all", args.artifact, Recorded(boxes, 1), options))
    cover = coverage(
        boxes, records, tracks, key, camera, {"score": args.cover_score, "min_height": CropSettings.min_height}
    )
    even = VideoOptions(camera, start, every=2, max_frames=len(frames), tracker=settings)
    asyncio.run(_index(args.video, work / "even", args.artifact, Recorded(boxes, 2), even))
    even_tracks, _ = replay_tracks(boxes, fps, every=2, settings=settings)
    ids = {local: track_id(camera, key, local) for local in even_tracks}
    search = asyncio.run(held_out_search(args.artifact, work / "even", frames, boxes, even_tracks, ids, start, fps))
    return {
        "settings": asdict(settings),
        "stored_tracks": len({r.track_id for r in records.values()}),
        "coverage": cover,
        "held_out_search": search,
    }


def run(args: argparse.Namespace) -> dict:
    frames, fps = read_frames(args.video, args.frames)
    camera, start = "bench", datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    boxes, detect_s = detect_all(create_detector(args.detector), frames)
    tracks, track_s = replay_tracks(boxes, fps)
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        options = VideoOptions(camera, start, max_frames=len(frames))
        summary, records = asyncio.run(
            _index(args.video, work / "speed", args.artifact, create_detector(args.detector), options)
        )
        crops = [
            frames[r.metadata["frame"]][b[1] : b[1] + b[3], b[0] : b[0] + b[2]]
            for r in records.values()
            for b in [r.metadata["box"]]
        ]
        embed_ips = asyncio.run(_embed_speed(args.artifact, crops[:64]))
        quality = {}
        for k, variant in enumerate(args.variants):
            settings = replace(TrackerSettings(), **VARIANTS[variant])
            quality[variant] = track_quality(args, frames, boxes, fps, settings, work / f"v{k}")
        if args.picture:
            draw_tracks(frames[args.picture_frame], tracks, args.picture_frame, fps, args.picture)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_stage = sum(summary.stages.values()) or 1.0
    first = quality[args.variants[0]]
    return {
        "video": str(args.video),
        "frames": len(frames),
        "size": list(frames[0].shape[:2][::-1]),
        "detector": str(args.detector),
        "artifact": str(args.artifact),
        "detector_fps": round(len(frames) / detect_s, 1),
        "tracker_fps": round(len(frames) / track_s, 1),
        "embed_crops_per_s": round(embed_ips, 1),
        "end_to_end_fps": round(summary.fps, 1),
        "stage_seconds": {k: round(v, 2) for k, v in summary.stages.items()},
        "stage_share": {k: round(v / total_stage, 3) for k, v in summary.stages.items()},
        "summary": {k: v for k, v in summary.to_dict().items() if k not in ("track_ids", "failed", "stages")},
        "coverage": first["coverage"],  # of the first variant (the current settings unless --variants says)
        "held_out_search": first["held_out_search"],
        "tracker_variants": quality,
        "machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "platform": platform.platform()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.video", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, default=Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"))
    p.add_argument("--detector", default="artifacts/detector")
    p.add_argument("--artifact", type=Path, required=True, help="embedder artifact")
    p.add_argument("--frames", type=int, help="only the first N frames")
    p.add_argument("--cover-score", type=float, default=0.5)
    p.add_argument("--picture", type=Path, help="write a frame with its tracks drawn here")
    p.add_argument("--picture-frame", type=int, default=300)
    p.add_argument(
        "--variants", default="current", help=f"tracker settings compared, comma-separated, of: {', '.join(VARIANTS)}"
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if not args.variants or any(v not in VARIANTS for v in args.variants):
        p.error(f"--variants takes names of: {', '.join(VARIANTS)}")
    report = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    for quality in report["tracker_variants"].values():
        quality["held_out_search"].pop("rows")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
