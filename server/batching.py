"""The per-worker queue in front of the model: bounded, with deadlines, micro-batching requests
that arrive while the model is busy, in arrival order.

One request at a time leads: it takes every waiting request with the same decoding options (up
to `max_batch_size` images, first come first served) and captions them as one batch, in a native
thread under gevent so the worker keeps reading requests meanwhile. Then it hands the lead to the
oldest request still waiting. A lone request never waits (unless `max_queue_delay_s` asks a batch
to wait for company), and under load a batch holds whatever queued during the previous one.

Overload is an answer, not a hang (as in Triton's queue policy): past `max_queue_images` waiting
images a request is refused at once with a 503 and Retry-After; a request still waiting at its
deadline is answered 503 and dropped; and a request whose client has hung up is dropped before it
reaches the model.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import observability as metrics
from . import tracing
from bundle.decoding import DEFAULT_LENGTH_PENALTY
from .engine import CaptionEngine, CaptionResult
from .errors import RequestError, unavailable


def off_event_loop(fn):
    """Run `fn()` in a native thread when gevent runs this process (so its event loop keeps
    serving other connections meanwhile), else directly."""
    try:
        from gevent import get_hub, monkey
    except ImportError:
        return fn()
    if not monkey.is_module_patched("threading"):
        return fn()
    # The exception comes back as a value: raised in the pool's thread, gevent's hub would print
    # its traceback to stderr as well, so every refused upload (a RequestError) wrote one.
    value, error = get_hub().threadpool.apply(_outcome, (fn,))
    if error is not None:
        raise error
    return value


def _outcome(fn):
    """`fn()`'s (value, None), or (None, the exception it raised)."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001  (re-raised by the caller, in its own thread)
        return None, exc


@dataclass
class BatchLimits:
    """The queue's bounds, as Triton's dynamic batcher names them."""

    max_batch_size: int = 16          # images in one model run (a larger request runs alone)
    max_queue_images: int = 32        # images waiting; a request that would go past it is refused
    max_queue_delay_s: float = 0.0    # how long a batch may wait for others to fill it
    combine: bool = True              # False: one request per model run (micro-batching off)

    @classmethod
    def from_config(cls, config) -> "BatchLimits":
        return cls(config.max_batch_size, config.max_queue_images, config.max_queue_delay_ms / 1e3,
                   config.micro_batching)


def always_connected() -> bool:
    return True


@dataclass(eq=False)  # jobs are compared by identity (deque.remove), never by their arrays
class _Job:
    images: np.ndarray
    options: tuple                      # (beam_size, max_length, length_penalty, attention): only equal ones share a batch
    deadline: float                     # on the batcher's clock
    connected: Callable[[], bool]
    queued: float
    wake: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    taken: bool = False                 # in a batch that is running: it will get its result
    result: CaptionResult | None = None
    error: BaseException | None = None
    trace: object = None                # the request's span context, for the batch's spans


class MicroBatcher:
    """`caption(...)` as CaptionEngine.caption, with concurrent callers batched together, behind a
    bounded queue with deadlines."""

    def __init__(self, engine: CaptionEngine, limits: BatchLimits | None = None, run=off_event_loop,
                 clock=time.perf_counter):
        self.engine, self.limits, self.run, self.clock = engine, limits or BatchLimits(), run, clock
        self.pending: deque[_Job] = deque()
        self.queued_images = 0
        self.lock = threading.Lock()
        self.busy = False
        self.seconds_per_image = 0.05   # a running estimate, for Retry-After

    @property
    def saturated(self) -> bool:
        """Whether the queue (images reserved: being decoded or waiting) is full."""
        return self.queued_images >= self.limits.max_queue_images

    def retry_after_s(self) -> float:
        """How long the work queued now should take."""
        return (self.queued_images + 1) * self.seconds_per_image

    def overloaded(self) -> RequestError:
        """The 503 for a request the queue has no room for (counted as shed)."""
        metrics.REQUESTS_SHED.labels("queue_full").inc()
        return unavailable("overloaded", f"the server is busy ({self.queued_images} images waiting); retry later",
                           self.retry_after_s())

    def deadline_passed(self, message: str) -> RequestError:
        """The 503 for a request whose deadline came before its images reached the model (counted as shed)."""
        metrics.REQUESTS_SHED.labels("deadline").inc()
        return unavailable("deadline_exceeded", message, self.retry_after_s())

    def reserve(self, images: int) -> None:
        """Count `images` against the queue bound before any work is done for them (decoding
        included), or refuse at once with a 503: a refused request must cost next to nothing.
        A request larger than the bound is taken when nothing else waits."""
        with self.lock:
            if self.queued_images and self.queued_images + images > self.limits.max_queue_images:
                raise self.overloaded()
            self.queued_images += images
            metrics.QUEUE_IMAGES.inc(images)

    def release(self, images: int) -> None:
        """Give back a reservation whose images will not be queued (a bad upload, say)."""
        with self.lock:
            self.queued_images -= images
            metrics.QUEUE_IMAGES.dec(images)

    def caption(self, images: np.ndarray, beam_size: int = 1, max_length: int | None = None,
                length_penalty: float = DEFAULT_LENGTH_PENALTY, deadline: float = math.inf,
                connected: Callable[[], bool] = always_connected, reserved: bool = False,
                attention: bool = False) -> CaptionResult:
        """Caption `images` in the next batch that has room; `deadline` is on this batcher's clock;
        `reserved` when the caller has already reserved their place.

        Raises a 503 RequestError when the queue is full or the deadline passes before the
        images reach the model.
        """
        if not reserved:
            self.reserve(len(images))
        job = _Job(images, (beam_size, max_length, length_penalty, attention), deadline, connected, self.clock(),
                   trace=tracing.current_context())
        with self.lock:
            self.pending.append(job)
            if not self.busy:
                self.busy = job.leads = True
        if not job.leads:
            self._wait(job)
        if job.result is None and job.error is None:
            self._lead()
        if job.error is not None:
            raise job.error
        return job.result

    def _dequeue(self, job: _Job) -> None:
        self.pending.remove(job)
        self.queued_images -= len(job.images)
        metrics.QUEUE_IMAGES.dec(len(job.images))

    def _wait(self, job: _Job) -> None:
        """Until a leader finishes `job` or hands it the lead; at its deadline, leave the queue."""
        remaining = job.deadline - self.clock()
        if job.wake.wait(max(0.0, remaining) if math.isfinite(remaining) else None):
            return
        with self.lock:
            if not (job.taken or job.leads):
                self._dequeue(job)
                self._drop(job, "deadline")
                return
        job.wake.wait()  # already in a running batch (or just made leader): at most one batch more

    def _drop(self, job: _Job, reason: str) -> None:
        if reason == "client_gone":
            metrics.REQUESTS_SHED.labels(reason).inc()
            job.error = RequestError(499, "client_closed_request", "the client closed the connection")
        else:
            job.error = self.deadline_passed("the request waited past its deadline; retry later")
        job.wake.set()

    def _take(self) -> list[_Job]:
        """The oldest live job, and after it every waiting live job with the same options while
        the images fit; jobs past their deadline or whose client has gone are dropped on the way."""
        now, batch, images = self.clock(), [], 0
        for job in list(self.pending):
            if batch and (not self.limits.combine or job.options != batch[0].options
                          or images + len(job.images) > self.limits.max_batch_size):
                continue
            if job.deadline <= now or not job.connected():
                self._dequeue(job)
                self._drop(job, "deadline" if job.deadline <= now else "client_gone")
                continue
            self._dequeue(job)
            job.taken = True
            batch.append(job)
            images += len(job.images)
        return batch

    def _gather(self) -> None:
        """With a queue delay, let a batch that is not full wait for more requests."""
        with self.lock:
            if not self.limits.combine or not self.pending:
                return
            until = self.pending[0].queued + self.limits.max_queue_delay_s
        while self.clock() < until and self.queued_images < self.limits.max_batch_size:
            time.sleep(min(0.001, until - self.clock()))

    def _lead(self) -> None:
        self._gather()
        with self.lock:
            batch = self._take()
        started = self.clock()
        try:
            if batch:
                self._run(batch, started)
        except BaseException as exc:  # every caller of the batch gets the error, and the lead moves on
            for job in batch:
                job.error = exc
        finally:
            with self.lock:
                if self.pending:
                    self.pending[0].leads = True
                    self.pending[0].wake.set()
                else:
                    self.busy = False
            for job in batch:
                job.wake.set()

    def _run(self, batch: list[_Job], started: float) -> None:
        beam_size, max_length, length_penalty, attention = batch[0].options
        images = np.concatenate([job.images for job in batch])
        result = self.run(lambda: self.engine.caption(images, beam_size, max_length, length_penalty, attention))
        total = len(images)
        seconds = (self.clock() - started)
        self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * seconds / total
        metrics.BATCH_IMAGES.observe(total)
        if tracing.enabled():
            batch_span = tracing.record_batch([job.trace for job in batch], started, result.timings_ms, total,
                                              len(batch))
            for job in batch:
                tracing.record_request_stages(job.trace, job.queued, started, result.timings_ms, batch_span,
                                              len(job.images))
        first = 0
        for job in batch:
            n = len(job.images)
            queue_ms = (started - job.queued) * 1e3
            job.result = CaptionResult(result.hypotheses[first:first + n], {"queue": queue_ms, **result.timings_ms})
            # Each request is charged its share of the batch's time, so the stage sums add up to
            # the model's busy time however many requests shared a batch.
            metrics.observe_stages({"queue": queue_ms, **{stage: ms * n / total
                                                          for stage, ms in result.timings_ms.items()}})
            first += n
