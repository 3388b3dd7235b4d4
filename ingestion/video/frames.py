"""Frames from a video file or a stream (OpenCV), on a reader thread, through a bounded queue.

A file is read at its own pace: the reader waits when the queue is full, so every frame (or every ``every``-th)
is analysed. A stream (rtsp://, http(s)://, a camera index) cannot wait: a frame that finds the queue full is
dropped and counted, so a slow consumer loses frames, never memory. ``FrameReader.stop()`` ends either.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

STREAM = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", re.IGNORECASE)
DEFAULT_FPS = 10.0  # when a file does not say its frame rate


class VideoError(Exception):
    """The video or stream cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    index: int  # position in the source (0-based), counting frames skipped by ``every``
    time_s: float  # seconds since the source's first frame (a stream: since the reader started)
    wall: float  # Unix seconds when the frame was read (a stream's clock)
    image: np.ndarray  # uint8 RGB (H, W, 3)


@dataclass
class ReadStatus:
    """What the reader knows when it ends: frames read, dropped, the file's declared length, an error."""

    read: int = 0
    dropped: int = 0
    declared: int = 0  # CAP_PROP_FRAME_COUNT of a file (0 when unknown, and for a stream)
    last_index: int = -1
    error: str | None = None
    decode_s: float = 0.0
    ran_out: bool = False  # reading ended because the source gave no more frames (not max_frames, not stop())

    @property
    def truncated(self) -> bool:
        """A file that gave out well before its declared length (a cut or damaged file)."""
        return self.ran_out and self.declared > 0 and self.last_index + 1 < self.declared - 1


def is_stream(source: str) -> bool:
    return bool(STREAM.match(source)) or source.isdigit()


def open_capture(source: str) -> cv2.VideoCapture:
    """An opened capture, or VideoError saying why not (missing file, not a video, unreachable stream)."""
    if not is_stream(source):
        path = Path(source)
        if not path.is_file():
            raise VideoError(f"no video file at {source}")
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"OpenCV cannot open {source} as a video (not a video, unsupported codec, or unreachable)")
    return capture


class FrameReader:
    """Reads ``source`` on a thread into a queue of at most ``queue_size`` frames; iterate it for the frames.

    ``every``: keep one frame in ``every``; ``max_frames``: stop after that many source frames (None: to the end);
    ``live``: read as a stream (drop frames, the clock's time) or as a file (wait); None: from the source's name.
    """

    def __init__(
        self,
        source: str,
        *,
        every: int = 1,
        queue_size: int = 8,
        max_frames: int | None = None,
        live: bool | None = None,
    ) -> None:
        if every < 1 or queue_size < 1:
            raise ValueError("every and queue_size must be at least 1")
        self.source = source
        self.stream = is_stream(source) if live is None else live
        self.every = every
        self.max_frames = max_frames
        self.status = ReadStatus()
        self._capture = open_capture(source)
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else DEFAULT_FPS
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not self.stream:
            self.status.declared = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._started_wall = time.time()
        self._thread = threading.Thread(target=self._run, name="video-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _put(self, frame: Frame | None) -> None:
        """Queue a frame; a stream drops it when the queue is full, a file waits (until stopped)."""
        while True:
            try:
                self._queue.put(frame, timeout=0.1 if frame is None or not self.stream else 0)
                return
            except queue.Full:
                if frame is not None and self.stream:
                    self.status.dropped += 1
                    return
                if self._stop.is_set() and frame is not None:
                    return

    def _run(self) -> None:
        capture, index = self._capture, -1
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and index + 1 >= self.max_frames:
                    break
                started = time.perf_counter()
                ok = capture.grab()
                index += 1
                if not ok:
                    self.status.ran_out = True
                    break
                if index % self.every:
                    continue
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    self.status.ran_out = True
                    break
                image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                self.status.decode_s += time.perf_counter() - started
                wall = time.time()
                time_s = wall - self._started_wall if self.stream else index / self.fps
                self.status.read += 1
                self.status.last_index = index
                self._put(Frame(index, time_s, wall, image))
            if self.status.ran_out and self.stream and self.status.error is None:
                self.status.error = f"the stream stopped sending frames after frame {self.status.last_index}"
        except cv2.error as exc:  # a damaged file can make the decoder raise instead of returning False
            self.status.error = f"decoding failed after frame {index}: {exc}"
        finally:
            capture.release()
            self._put(None)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self.stop()
        while self._thread.is_alive():  # let the reader see the stop; drain so a waiting put returns
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
