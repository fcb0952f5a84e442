"""Dynamic batching: the images of concurrent requests gathered into one model call, on one worker thread.

    batcher = Batcher(lambda images: rec.predict(images, batch_size=16), max_batch=16, wait_ms=5, max_queue=64)
    results = await batcher.submit(images, timeout_s=60)   # [BatchResult]; raises QueueFull or TimeoutError
    batcher.close()

Why a thread: one model call takes 0.1-3 s of CPU or GPU; run on the event loop it would stall every other
request (uploads, health checks, the page's files). One worker owns the model, so the Recognizer never runs
concurrently with itself, and batching follows naturally: while a batch runs the next requests queue up, and
the worker takes up to `max_batch` images of them at once. After the first image of an idle queue arrives the
worker waits at most `wait_ms` for company; under load the queue is already full when a batch ends, so the
window costs nothing there.

A full queue refuses at once (`QueueFull`, with an estimate of when to retry) instead of letting requests pile
up; a request that times out or whose client goes away is taken out of the queue, so no model time is spent on
an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("texocr.serve")


class QueueFull(Exception):
    """The queue cannot take the request's images now; `retry_after_s` is when it likely can."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class BatchResult:
    """One image's answer: what `predict` returned for it and how its time was spent."""

    output: Any
    queue_s: float
    """From submission until its batch started."""
    model_s: float
    """Wall time of the model call it was part of."""
    batch_size: int
    """Images in that model call (from every request that shared it)."""


class _Job:
    """One request's images; its future is resolved on the request's own event loop once all are done."""

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[BatchResult]] = loop.create_future()
        self.results: list[BatchResult | None] = [None] * n
        self.remaining = n

    def _resolve(self, set_it: Callable[[], None]) -> None:
        def on_loop() -> None:
            if not self.future.done():  # a timed-out request has cancelled its future already
                set_it()

        try:
            self.loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the request's loop is gone (its client left): nobody to tell
            pass

    def deliver(self, index: int, result: BatchResult) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            done = [r for r in self.results if r is not None]
            self._resolve(lambda: self.future.set_result(done))

    def fail(self, error: BaseException) -> None:
        self._resolve(lambda: self.future.set_exception(error))


@dataclass
class _Item:
    job: _Job
    index: int
    image: Any
    queued_at: float


class Batcher:
    """Gathers images from concurrent `submit` calls into calls of `predict(images) -> outputs` (same order)."""

    def __init__(self, predict: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 16,
                 wait_ms: float = 5.0, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or wait_ms < 0:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1, "
                             f"wait_ms ({wait_ms}) >= 0")
        self._predict = predict
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, wait_ms / 1000
        self._queue: deque[_Item] = deque()
        self._running = 0  # images in the model call now
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.images = 0
        self._batch_s = 0.5  # running mean of a model call's time: the basis of Retry-After
        self._thread = threading.Thread(target=self._work, name="texocr-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Images queued or in the model call now."""
        with self._cond:
            return len(self._queue) + self._running

    async def submit(self, images: Sequence[Any], *, timeout_s: float | None = None) -> list[BatchResult]:
        """The outputs for `images`, in order, once the worker has run them (possibly batched with others)."""
        if not images:
            return []
        job = _Job(len(images), asyncio.get_running_loop())
        now = time.perf_counter()
        with self._cond:
            if self._closed:
                raise QueueFull(retry_after_s=5)
            waiting = len(self._queue) + self._running
            if waiting + len(images) > self.max_queue:
                batches_ahead = math.ceil((waiting + len(images)) / self.max_batch)
                raise QueueFull(retry_after_s=max(1, math.ceil(batches_ahead * self._batch_s)))
            self._queue.extend(_Item(job, i, im, now) for i, im in enumerate(images))
            self._cond.notify()
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        finally:
            if not job.future.done() or job.future.cancelled():
                self._withdraw(job)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, let the batch in progress finish, fail what is still queued."""
        with self._cond:
            self._closed = True
            left, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for job in {id(it.job): it.job for it in left}.values():
            job.fail(QueueFull(retry_after_s=5))
        self._thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"pending": len(self._queue) + self._running, "batches": self.batches, "images": self.images,
                    "mean_batch": round(self.images / self.batches, 2) if self.batches else 0.0}

    # ------------------------------------------------------------ worker thread

    def _withdraw(self, job: _Job) -> None:
        with self._cond:
            self._queue = deque(it for it in self._queue if it.job is not job)

    def _take(self) -> list[_Item] | None:
        """The next batch: waits for a first image, then up to `wait_s` (from its arrival) for more."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].queued_at + self.wait_s
            while len(self._queue) < self.max_batch and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._running = len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)
            with self._cond:
                self._running = 0

    def _run(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            outputs = list(self._predict([it.image for it in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f"predict returned {len(outputs)} outputs for {len(batch)} images")
        except Exception as e:  # a model failure fails this batch's requests, not the server
            log.exception("model call failed on a batch of %d images", len(batch))
            for job in {id(it.job): it.job for it in batch}.values():
                job.fail(e)
            return
        elapsed = time.perf_counter() - start
        with self._cond:
            self.batches += 1
            self.images += len(batch)
            self._batch_s = 0.8 * self._batch_s + 0.2 * elapsed
        for it, out in zip(batch, outputs):
            it.job.deliver(it.index, BatchResult(out, queue_s=start - it.queued_at, model_s=elapsed,
                                                 batch_size=len(batch)))
