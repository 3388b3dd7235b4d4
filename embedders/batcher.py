"""Group concurrent embedding calls into one model call, with the policy of Triton's dynamic batcher.

Used by the in-process ONNX Runtime embedder, so that many concurrent requests make a few large session calls
(throughput) rather than many small ones, while a request that arrives alone runs at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from embedders.protocol import EmbedderUnavailable


class MicroBatcher:
    """Group concurrent ``submit`` calls into one ``run`` call, each caller getting back its own rows.

    Policy of Triton's dynamic batcher with one model instance: the worker takes queued requests until the
    batch holds max_batch rows or max_delay_s has passed since its oldest request arrived, then runs it; requests
    arriving meanwhile wait for the next batch. One exception: a request that arrives alone at an idle batcher runs
    at once (nothing else is queued, so a wait could only add latency). A request is never split across batches (run splits oversized
    ones itself). If run raises, every caller of that batch gets the exception.
    """

    def __init__(self, run: Callable[[np.ndarray], Awaitable[np.ndarray]], *, max_batch: int, max_delay_s: float):
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError("max_batch must be >= 1 and max_delay_s >= 0")
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._queue: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._running = False  # a batch is in the model
        self._closed = False
        self._head_arrived_idle = False  # the oldest queued request found the queue empty and no batch running
        self.batch_sizes: list[int] = []  # rows per run call, for tests and benchmarks

    async def submit(self, images: np.ndarray) -> np.ndarray:
        if self._worker is None:  # started lazily so it lives on the caller's event loop
            self._arrived = asyncio.Event()
            self._worker = asyncio.create_task(self._work(), name="micro-batcher")
        if not self._running and not self._queue and len(images) <= self.max_batch:
            return await self._run_alone(images)
        future = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._head_arrived_idle = not self._running
        self._queue.append((images, future, time.monotonic()))
        assert self._arrived is not None  # made with the worker, above
        self._arrived.set()
        return await future

    async def _run_alone(self, images: np.ndarray) -> np.ndarray:
        """A request that finds the batcher idle: run in the caller's own task, without a hop through the worker
        (two task switches fewer); whatever arrives meanwhile queues for the worker, which waits for this run."""
        self._running = True
        self.batch_sizes.append(len(images))
        try:
            out = await self._run(images)
        finally:
            self._running = False
            if self._queue and self._arrived is not None:
                self._arrived.set()
        if self._closed:
            raise EmbedderUnavailable("embedder closed")
        return out

    def _queued_rows(self) -> int:
        return sum(len(images) for images, _, _ in self._queue)

    async def _work(self) -> None:
        assert self._arrived is not None  # submit() makes it before starting this worker
        while True:
            while not self._queue or self._running:  # a lone request may be running in its caller's task
                self._arrived.clear()
                await self._arrived.wait()
            # A request that finds the batcher idle runs at once: waiting for company that is not coming would add
            # max_delay to every request of a lone client. Requests that queued behind a running batch wait for it.
            lone = self._head_arrived_idle and len(self._queue) == 1
            close_at = self._queue[0][2] + (0.0 if lone else self.max_delay_s)
            while self._queued_rows() < self.max_batch and (wait := close_at - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=wait)
                except TimeoutError:
                    break
            batch = [self._queue.popleft()]
            rows = len(batch[0][0])
            while self._queue and rows + len(self._queue[0][0]) <= self.max_batch:
                batch.append(self._queue.popleft())
                rows += len(batch[-1][0])
            self._head_arrived_idle = False  # whatever is still queued arrived while this batch was being formed
            self._running = True
            try:
                await self._run_batch(batch)
            finally:
                self._running = False

    async def _run_batch(self, batch: list[tuple[np.ndarray, asyncio.Future, float]]) -> None:
        arrays = [images for images, _, _ in batch]
        self.batch_sizes.append(sum(len(a) for a in arrays))
        try:
            out = await self._run(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        except BaseException as e:  # callers of the batch must never wait forever, even when the worker is cancelled
            failure = e if isinstance(e, Exception) else EmbedderUnavailable("embedder closed")
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(e, Exception):
                raise
            return
        start = 0
        for images, future, _ in batch:
            if not future.done():  # a caller that gave up (cancelled) is skipped
                future.set_result(out[start : start + len(images)])
            start += len(images)

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue:
            _, future, _ = self._queue.popleft()
            if not future.done():
                future.set_exception(EmbedderUnavailable("embedder closed"))
