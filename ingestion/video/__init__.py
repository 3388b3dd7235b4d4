"""Video files and streams -> people tracks -> a few good crops per track -> the gallery.

    frames (reader thread, bounded queue) -> detector -> ByteTrack -> crop candidates per live track
        -> when a track ends: its best crops, JPEG -> ingestion.pipeline.WritePipeline (embed, keep crops, add)

The reader (ingestion.video.frames), the analysis (detector, tracker, crop choice; one thread) and the writer (the
event loop, through the one write pipeline) run side by side, joined by bounded queues: a file is read as fast as
the slowest stage goes; a stream drops the frames that find the queue full and counts them. A stream runs until
``stop`` is set (the command line sets it on Ctrl-C or SIGTERM); the tracks still open are then written.

Each stored crop is an item with ``camera_id``, ``captured_at`` (``start`` plus the frame's time in the file, or
the stream's clock), ``track_id`` (ingestion.video.tracking.track_id), no ``person_id``, ``source`` and metadata
``frame``, ``box`` [x, y, w, h] in source pixels, ``score`` (the detector's), ``sharpness`` and ``quality``.
A track is written when it ends (unseen for ``lost_seconds``), so an item is acknowledged a few seconds after its
person left; what was acknowledged stays whatever happens next (a cut file, a stream that drops, a kill).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from embedders.detector import Detector
from index.records import Record
from ingestion.pipeline import Item, WritePipeline
from ingestion.video.crops import Candidate, CropSettings, TrackCrops, candidate, occlusion
from ingestion.video.frames import Frame, FrameReader, VideoError
from ingestion.video.tracking import PeopleTracker, TrackerSettings, track_id, track_key

MAX_LISTED_TRACKS = 10_000  # track ids the summary lists (``tracks`` counts them all)

__all__ = ["VideoError", "VideoOptions", "VideoSummary", "index_video", "CropSettings", "TrackerSettings"]


@dataclass(frozen=True)
class VideoOptions:
    camera_id: str
    start: float | None = (
        None  # Unix seconds of the first frame; None: a file's mtime less its length, a stream's clock
    )
    every: int = 1  # analyse one frame in ``every``
    max_frames: int | None = None  # stop after this many source frames
    queue_frames: int = 8  # frames waiting between the reader and the detector
    live: bool | None = None  # a stream (drop frames it cannot keep up with) or a file (wait); None: by its name
    batch_size: int = 32  # crops per write
    jpeg_quality: int = 90
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    crops: CropSettings = field(default_factory=CropSettings)


@dataclass
class VideoSummary:
    source: str
    camera_id: str
    frames: int = 0  # analysed
    detections: int = 0  # person boxes over all analysed frames
    tracks: int = 0  # tracks stored (seen in at least min_frames frames, with a crop big enough)
    short_tracks: int = 0  # tracks left out as too short or too small
    crops: int = 0  # items added
    duplicates: int = 0  # crops the gallery already held (the same video indexed again)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    dropped_frames: int = 0  # a stream's frames the analysis could not keep up with
    truncated: bool = False  # the file ended before its declared length
    error: str | None = None  # why reading stopped early, if it did
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (they overlap in time)
    track_ids: list[str] = field(default_factory=list)  # the first MAX_LISTED_TRACKS stored

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fps"] = round(self.fps, 2)
        data["failed"] = [{"item": n, "reason": r} for n, r in self.failed]
        return data

    def format(self) -> str:
        line = (
            f"{self.source} [{self.camera_id}]: frames {self.frames}, people detections {self.detections}, "
            f"tracks {self.tracks}, crops {self.crops} (+{self.duplicates} already stored, {len(self.failed)} failed), "
            f"dropped frames {self.dropped_frames}, {self.fps:.1f} fps in {self.seconds:.1f} s"
        )
        if self.stages:
            line += " | " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items())
        if self.truncated or self.error:
            line += f"\n  the video ended early: {self.error or 'fewer frames than it declares (cut or damaged)'}"
        return line


def default_start(source: str, reader: FrameReader) -> float:
    """A stream's first frame is now; a file's is its modification time less its length (a recorder writes the
    file until the recording ends)."""
    if reader.stream:
        return time.time()
    length = reader.status.declared / reader.fps if reader.status.declared else 0.0
    return os.stat(source).st_mtime - length


class _Analysis:
    """Detector, tracker and crop choice over the reader's frames, on one thread; finished tracks' items go to
    ``out`` (bounded: the analysis waits while the writer is behind)."""

    def __init__(
        self, reader: FrameReader, detector: Detector, options: VideoOptions, start: float, bar: tqdm | None
    ) -> None:
        self.reader, self.detector, self.options, self.bar = reader, detector, options, bar
        self.start = start
        self.key = track_key(options.camera_id, reader.source, start)
        self.tracker = PeopleTracker(reader.fps / options.every, options.tracker)
        self.live: dict[int, TrackCrops] = {}
        self.out: queue.Queue[list[Item] | None] = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.counts = {"frames": 0, "detections": 0, "tracks": 0, "short_tracks": 0}
        self.stages = {"detect": 0.0, "track": 0.0, "crops": 0.0}
        self.track_ids: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for frame in self.reader:
                if self.stop.is_set():
                    break
                self._frame(frame)
            self._end_tracks(lambda t: True)
        except BaseException as exc:  # handed to the writer, which raises it
            self.failure = exc
        finally:
            self.reader.stop()
            self._emit(None)

    def _frame(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        boxes = self.detector.detect(frame.image)
        t1 = time.perf_counter()
        tracked = self.tracker.update(boxes)
        t2 = time.perf_counter()
        # Covered by any detected person, tracked or not (a person the tracker has not taken up still hides one).
        covered = occlusion(np.array([b.xyxy for b in tracked], np.float32).reshape(-1, 4), boxes.xyxy)
        for box, cover in zip(tracked, covered, strict=True):
            crops = self.live.setdefault(box.local_id, TrackCrops(self.options.crops))
            crops.see(frame.index)
            c = candidate(
                frame.image, box.xyxy, box.score, frame.index, frame.time_s, frame.wall, self.options.crops, cover
            )
            if c is not None:
                crops.offer(c)
        gone = frame.index - (self.tracker.max_lost_frames + 1) * self.options.every  # ByteTrack has let it go
        self._end_tracks(lambda t: t.last_frame < gone)
        self.stages["detect"] += t1 - t0
        self.stages["track"] += t2 - t1
        self.stages["crops"] += time.perf_counter() - t2
        self.counts["frames"] += 1
        self.counts["detections"] += len(boxes)
        if self.bar is not None:
            self.bar.update(1)

    def _end_tracks(self, ended: Callable[[TrackCrops], bool]) -> None:
        for local_id in [i for i, t in self.live.items() if ended(t)]:
            crops = self.live.pop(local_id)
            chosen = crops.choose() if crops.frames_seen >= self.options.tracker.min_frames else []
            if not chosen:
                self.counts["short_tracks"] += 1
                continue
            self.counts["tracks"] += 1
            tid = track_id(self.options.camera_id, self.key, local_id)
            if len(self.track_ids) < MAX_LISTED_TRACKS:  # a stream may run for weeks: the list stays bounded
                self.track_ids.append(tid)
            self._emit([self._item(tid, c) for c in chosen])

    def _item(self, tid: str, c: Candidate) -> Item:
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(c.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.options.jpeg_quality]
        )
        if not ok:
            raise VideoError(f"JPEG encoding failed for {tid} frame {c.frame}")
        captured = c.wall if self.reader.stream else self.start + c.time_s
        record = Record(
            camera_id=self.options.camera_id,
            captured_at=captured,
            track_id=tid,
            source=self.reader.source,
            metadata={
                "frame": c.frame,
                "box": list(c.box),
                "score": round(c.score, 4),
                "sharpness": round(c.sharpness, 1),
                "quality": round(c.quality, 4),
            },
        )
        return Item(f"{tid}/frame{c.frame}", jpeg.tobytes(), record)

    def _emit(self, items: list[Item] | None) -> None:
        while True:
            try:
                self.out.put(items, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set():  # the writer has stopped: nobody reads any more
                    return


async def index_video(
    source: str | os.PathLike,
    pipeline: WritePipeline,
    detector: Detector,
    options: VideoOptions,
    *,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> VideoSummary:
    """Index one video file or stream through ``pipeline`` with a started ``detector``; returns the summary.

    Raises VideoError when the source cannot be opened; a file that breaks off later ends the run with what was
    read (``truncated``/``error`` in the summary). Failures of the pipeline (embedder, gallery, crop store) are
    raised after the reader and the analysis have stopped; the tracks written before stay."""
    source = str(source)
    reader = FrameReader(
        source, every=options.every, queue_size=options.queue_frames, max_frames=options.max_frames, live=options.live
    )
    start = options.start if options.start is not None else default_start(source, reader)
    total = None if reader.stream or not reader.status.declared else -(-reader.status.declared // options.every)
    summary = VideoSummary(source, options.camera_id)
    started = time.perf_counter()
    with tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        analysis = _Analysis(reader, detector, options, start, bar if progress else None)
        worker = threading.Thread(target=analysis.run, name="video-analysis", daemon=True)
        worker.start()
        watcher = asyncio.get_running_loop().run_in_executor(None, _watch, stop, analysis, reader)
        try:
            summary.stages["write"] = await _write(analysis, pipeline, options.batch_size, summary)
        finally:
            analysis.stop.set()
            reader.close()
            await asyncio.to_thread(worker.join)
            await watcher
    if analysis.failure is not None:
        raise analysis.failure
    summary.seconds = time.perf_counter() - started
    summary.frames, summary.detections = analysis.counts["frames"], analysis.counts["detections"]
    summary.tracks, summary.short_tracks = analysis.counts["tracks"], analysis.counts["short_tracks"]
    summary.track_ids = analysis.track_ids
    summary.dropped_frames = reader.status.dropped
    summary.truncated, summary.error = reader.status.truncated, reader.status.error
    summary.stages = {"decode": reader.status.decode_s, **analysis.stages, **summary.stages}
    return summary


def _watch(stop: threading.Event | None, analysis: _Analysis, reader: FrameReader) -> None:
    """Pass an outside stop (Ctrl-C on a stream) to the reader: the analysis then ends its tracks and writes them."""
    while not analysis.stop.is_set():
        if stop is not None and stop.wait(0.2):
            reader.stop()
            return
        if stop is None:
            analysis.stop.wait(0.2)


async def _write(analysis: _Analysis, pipeline: WritePipeline, batch_size: int, summary: VideoSummary) -> float:
    """Write finished tracks' items in batches as they come (a batch closes when full or when nothing waits)."""
    spent, done = 0.0, False
    while not done:
        batch = await asyncio.to_thread(analysis.out.get)
        if batch is None:
            break
        while len(batch) < batch_size:
            try:
                more = analysis.out.get_nowait()
            except queue.Empty:
                break
            if more is None:
                done = True
                break
            batch.extend(more)
        t0 = time.perf_counter()
        for result in await pipeline.add(batch):
            if result.error is not None:
                summary.failed.append((result.name, result.reason or ""))
            elif result.added:
                summary.crops += 1
            else:
                summary.duplicates += 1
        spent += time.perf_counter() - t0
    return spent
