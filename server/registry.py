"""The models a worker serves, by name, and whether the worker is ready for traffic."""
from __future__ import annotations

import logging
import threading
from functools import partial

import numpy as np

from bundle.preprocess import input_shape

from . import lifecycle
from .batching import off_event_loop
from .captioning import ServedModel, preprocess_uploads, sample_upload
from .config import Config
from .engine import CaptionEngine
from .errors import RequestError

log = logging.getLogger(__name__)


class ModelRegistry:
    """Every served model (the first is the default), each behind its own queue."""

    def __init__(self, engines: dict[str, CaptionEngine], config: Config):
        self.config = config
        # One set of decoding slots for the whole worker: at most this many uploads' pixels in memory.
        slots = threading.BoundedSemaphore(config.preprocess_threads)
        self.models = {name: ServedModel(engine, config, slots) for name, engine in engines.items()}
        self.default = next(iter(self.models))

    @property
    def engines(self) -> dict[str, CaptionEngine]:
        return {name: model.engine for name, model in self.models.items()}

    @property
    def engine(self) -> CaptionEngine:
        return self.models[self.default].engine

    def model(self, name: str | None) -> ServedModel:
        """Model `name` (the default when None); a RequestError names the choices."""
        if name is None:
            return self.models[self.default]
        if name not in self.models:
            raise RequestError(422, "unknown_model", f"no model named {name[:60]!r}; "
                                                     f"choose from {', '.join(self.models)}")
        return self.models[name]

    def model_named_in(self, values) -> ServedModel:
        """The model a request's `model` values name (query and form; every one must be served)."""
        chosen = [self.model(name) for name in values.getlist("model")]
        return chosen[0] if chosen else self.model(None)

    @property
    def all_saturated(self) -> bool:
        return all(model.batcher.saturated for model in self.models.values())

    def overloaded(self):
        """The 503 for a request no queue has room for (counted as shed)."""
        return self.models[self.default].batcher.overloaded()

    def refuse_when_full(self) -> None:
        """Before a request's body is even read: when every model's queue is full, answer 503 at
        once, so that clients retrying under overload cost no parsing. (server/shedding.py answers
        the API's before they reach Flask; this is for the form's, and for a request that was on its
        way through Flask when the queue filled.)"""
        if self.all_saturated:
            raise self.overloaded()

    @property
    def any_saturated(self) -> bool:
        return any(model.batcher.saturated for model in self.models.values())

    def warm_up(self) -> None:
        """Caption the largest batch a request (or a micro-batch) can make with every model, so
        that onnxruntime's memory arena grows to its peak at start-up rather than under load; and
        take a JPEG and a PNG through the upload path (decoding, resizing, the form's preview), so
        that the first request does not pay for its first use either."""
        uploads = [sample_upload("JPEG"), sample_upload("PNG")]
        for engine in self.engines.values():
            largest = max(self.config.max_images, self.config.max_batch_size)
            blank = np.zeros((largest, *input_shape(engine.preprocessing)), np.float32)
            # Off the event loop, so /healthz and /readyz keep answering meanwhile.
            off_event_loop(partial(preprocess_uploads, uploads, self.config, engine, previews=True))
            off_event_loop(partial(engine.caption, blank, beam_size=2))


class Readiness:
    """Whether this worker should get traffic: after its warm-up, and not while draining or full."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self.ready = threading.Event()

    def warm_up(self) -> None:
        try:
            self.registry.warm_up()
            self.ready.set()
            log.info("ready: warm-up captions done for %s", ", ".join(self.registry.models))
        except Exception:  # readiness stays false, and /readyz says so
            log.exception("warm-up caption failed")

    def status(self) -> str:
        """ready, or why a load balancer should send work elsewhere: starting, draining, saturated."""
        if not self.ready.is_set():
            return "starting"
        if lifecycle.draining():
            return "draining"
        if self.registry.any_saturated:
            return "saturated"
        return "ready"
