"""Dynamic batching: one worker thread owns the model; requests that arrive together share a forward pass.

The design people know from Triton's dynamic batcher and Ray Serve's ``@serve.batch``:
a job waits at most ``max_wait_s`` for companions of the same bank, and a batch holds
at most ``max_batch`` images. The queue is bounded (``max_queue`` images): a full queue
refuses new work at once instead of letting latency grow without limit.

Jobs are ``concurrent.futures.Future`` objects, so the event loop awaits them with
``asyncio.wrap_future`` and a request that gives up (timeout, client gone) cancels its
jobs: a cancelled job that has not started is never scored.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

# Scores the inputs of one batch for one bank, returning one result per input, in order.
ScoreBatch = Callable[[str, list[Any]], Sequence[Any]]


class QueueFull(Exception):
    """The queue cannot take the images of a request now; the client should retry later."""


class NotRunning(Exception):
    """The batcher is stopping (draining) or has stopped: it takes no new work."""


@dataclass
class Job:
    """One image waiting to be scored: its bank, its prepared inputs, and the future of its result."""

    bank: str
    inputs: Any
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: Optional[float] = None
    batch_size: int = 0
    model_s: float = 0.0


@dataclass
class Reservation:
    """Places in the queue held for a request's images while they are decoded."""

    images: int


class Batcher:
    """Collects jobs into per-bank batches and scores them in its single worker thread.

    ``observe_batch(size)`` and ``observe_depth(images)`` report to the metrics.
    """

    def __init__(
        self,
        score: ScoreBatch,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        observe_batch: Callable[[int], None] = lambda size: None,
        observe_depth: Callable[[int], None] = lambda depth: None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait_s at least 0")
        self.score = score
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.observe_batch = observe_batch
        self.observe_depth = observe_depth
        self._queues: dict[str, collections.deque[Job]] = collections.defaultdict(collections.deque)
        self._depth = 0
        self._reserved = 0  # places held for images being decoded
        self._accepting = True
        self._stopped = False
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    @property
    def depth(self) -> int:
        """Images waiting (not yet taken into a batch)."""
        return self._depth

    def start(self, before: Callable[[], None] = lambda: None) -> None:
        """Start the worker; it runs ``before`` first (loading the model there makes it the model's owner)."""
        self._thread = threading.Thread(target=self._run, args=(before,), name="fade-batcher", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def reserve(self, images: int) -> Iterator[Reservation]:
        """Hold places in the queue for ``images`` about to be prepared, so that no more are prepared than fit.

        Raises :class:`QueueFull` or :class:`NotRunning` at once; the places left unused are freed on exit.
        """
        with self._changed:
            self._check_room(images)
            self._reserved += images
        reservation = Reservation(images)
        try:
            yield reservation
        finally:
            with self._changed:
                self._reserved -= reservation.images

    def submit(self, bank: str, inputs: list[Any], reservation: Optional[Reservation] = None) -> list[Job]:
        """Queue one job per input, all or none; raises :class:`QueueFull` or :class:`NotRunning`.

        With a ``reservation`` (of at least as many images) the places it holds are used.
        """
        jobs = [Job(bank, one) for one in inputs]
        with self._changed:
            if reservation is not None and reservation.images >= len(jobs):
                if not self._accepting:
                    raise NotRunning("the service is stopping")
                reservation.images -= len(jobs)
                self._reserved -= len(jobs)
            else:
                self._check_room(len(jobs))
            self._queues[bank].extend(jobs)
            self._set_depth(self._depth + len(jobs))
            self._changed.notify_all()
        return jobs

    def _check_room(self, images: int) -> None:
        if not self._accepting:
            raise NotRunning("the service is stopping")
        if self._depth + self._reserved + images > self.max_queue:
            raise QueueFull(f"the queue is full ({self._depth} of {self.max_queue} images waiting, "
                            f"{self._reserved} being prepared)")

    def stop(self, timeout_s: Optional[float] = None) -> bool:
        """Take no new work, score what is queued, stop the worker; False if it was still busy after ``timeout_s``."""
        with self._changed:
            self._accepting = False
            self._stopped = True
            self._changed.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def refuse_new_work(self) -> None:
        """Draining: what is queued is still scored, nothing new is taken."""
        with self._changed:
            self._accepting = False
            self._changed.notify_all()

    def cancel_queued(self) -> int:
        """Drop every job not taken into a batch yet (their futures are cancelled); returns how many."""
        with self._changed:
            dropped = [job for queue in self._queues.values() for job in queue]
            for queue in self._queues.values():
                queue.clear()
            self._set_depth(0)
            self._changed.notify_all()
        for job in dropped:
            job.future.cancel()
        return len(dropped)

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self.observe_depth(depth)

    def _run(self, before: Callable[[], None]) -> None:
        before()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._score(batch)

    def _next_batch(self) -> Optional[list[Job]]:
        """Wait for work, then for companions of the oldest job's bank; None once stopped and empty."""
        with self._changed:
            while not self._depth:
                if self._stopped:
                    return None
                self._changed.wait()
            bank = min((q for q in self._queues.values() if q), key=lambda q: q[0].queued_at)[0].bank
            queue = self._queues[bank]
            deadline = queue[0].queued_at + self.max_wait_s
            while len(queue) < self.max_batch and self._accepting:  # draining: no companion can come
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            taken = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            self._set_depth(self._depth - len(taken))
        # A job whose request gave up meanwhile is dropped here, never scored.
        return [job for job in taken if job.future.set_running_or_notify_cancel()]

    def _score(self, batch: list[Job]) -> None:
        if not batch:
            return
        started = time.monotonic()
        for job in batch:
            job.started_at, job.batch_size = started, len(batch)
        self.observe_batch(len(batch))
        try:
            results = self.score(batch[0].bank, [job.inputs for job in batch])
        except Exception as exc:  # the worker must survive a failed batch: its requests get the error
            for job in batch:
                job.future.set_exception(exc)
            return
        model_s = time.monotonic() - started
        for job, result in zip(batch, results):
            job.model_s = model_s
            job.future.set_result(result)
