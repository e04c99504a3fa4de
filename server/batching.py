"""Micro-batching: requests that arrive while the engine is busy are captioned together, in
arrival order.

There is no batching window. One request at a time leads: it takes every waiting request with
the same decoding options (up to `max_images` images, first come first served) and captions them
as one batch, in a native thread under gevent so the worker keeps reading requests meanwhile.
Then it hands the lead to the oldest request still waiting. A lone request never waits, and
under load a batch holds whatever queued during the previous one.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .engine import CaptionEngine, CaptionResult


def off_event_loop(fn):
    """Run `fn()` in a native thread when gevent runs this process (so its event loop keeps
    serving other connections meanwhile), else directly."""
    try:
        from gevent import get_hub, monkey
    except ImportError:
        return fn()
    if monkey.is_module_patched("threading"):
        return get_hub().threadpool.apply(fn)
    return fn()


@dataclass(eq=False)  # jobs are compared by identity (deque.remove), never by their arrays
class _Job:
    images: np.ndarray
    options: tuple                      # (beam_size, max_length, length_penalty): only equal ones share a batch
    queued: float = field(default_factory=time.perf_counter)
    wake: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    result: CaptionResult | None = None
    error: BaseException | None = None


class MicroBatcher:
    """`caption(...)` as CaptionEngine.caption, with concurrent callers batched together."""

    def __init__(self, engine: CaptionEngine, max_images: int, run=off_event_loop):
        self.engine, self.max_images, self.run = engine, max_images, run
        self.pending: deque[_Job] = deque()
        self.lock = threading.Lock()
        self.busy = False

    def caption(self, images: np.ndarray, beam_size: int = 1, max_length: int | None = None,
                length_penalty: float = 0.0) -> CaptionResult:
        job = _Job(images, (beam_size, max_length, length_penalty))
        with self.lock:
            self.pending.append(job)
            if not self.busy:
                self.busy = job.leads = True
        if not job.leads:
            job.wake.wait()  # set with a result by a leader, or to make this job the leader
        if job.result is None and job.error is None:
            self._lead()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """The oldest job, and after it every waiting job with the same options while the images fit."""
        first = self.pending.popleft()
        batch, images = [first], len(first.images)
        for job in list(self.pending):
            if job.options == first.options and images + len(job.images) <= self.max_images:
                self.pending.remove(job)
                batch.append(job)
                images += len(job.images)
        return batch

    def _lead(self) -> None:
        with self.lock:
            batch = self._take()
        started = time.perf_counter()
        try:
            beam_size, max_length, length_penalty = batch[0].options
            images = np.concatenate([job.images for job in batch])
            result = self.run(lambda: self.engine.caption(images, beam_size, max_length, length_penalty))
            first = 0
            for job in batch:
                n = len(job.images)
                job.result = CaptionResult(result.hypotheses[first:first + n],
                                           {"queue": (started - job.queued) * 1e3, **result.timings_ms})
                first += n
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
