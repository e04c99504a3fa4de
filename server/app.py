"""The Flask application factory: configuration, the model, blueprints, errors, headers.

Run under gunicorn (see gunicorn.conf.py): `gunicorn -c gunicorn.conf.py`.
"""
from __future__ import annotations

import io
import logging
import threading
from functools import partial

import numpy as np
from flask import Flask, Request, jsonify, request
from werkzeug.exceptions import HTTPException

from . import lifecycle
from .batching import off_event_loop
from .bundle import load_bundles
from .captioning import ServedModel
from .config import Config
from .engine import CaptionEngine
from .errors import RequestError

log = logging.getLogger(__name__)
# The variant tools refuse below this by default; a bundle written with the gate lowered
# (as `make bench` does for the int8 speed figures) still serves, with a warning.
VARIANT_AGREEMENT_WARNING = 0.98

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class InMemoryRequest(Request):
    """Werkzeug spools large multipart files to temporary files; uploads stay in memory here
    (the body is already capped by MAX_CONTENT_LENGTH, so memory is bounded)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


class ModelState:
    """The models of this process (the first is the default), each behind its own queue, and
    whether their warm-up captions have run."""

    def __init__(self, engines: dict[str, CaptionEngine], config: Config):
        self.config = config
        # One set of decoding slots for the whole worker: at most this many uploads' pixels in memory.
        slots = threading.BoundedSemaphore(config.preprocess_threads)
        self.models = {name: ServedModel(engine, config, slots) for name, engine in engines.items()}
        self.default = next(iter(self.models))
        self.ready = threading.Event()

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

    def refuse_when_full(self) -> None:
        """Before a request's body is even read: when every model's queue is full, answer 503 at
        once, so that clients retrying under overload cost no parsing."""
        if all(model.batcher.saturated for model in self.models.values()):
            raise self.models[self.default].batcher.overloaded()

    def status(self) -> str:
        """ready, or why a load balancer should send work elsewhere: starting, draining, saturated."""
        if not self.ready.is_set():
            return "starting"
        if lifecycle.draining():
            return "draining"
        if any(model.batcher.saturated for model in self.models.values()):
            return "saturated"
        return "ready"

    def warm_up(self) -> None:
        try:
            for engine in self.engines.values():
                # The largest batch a request (or a micro-batch) can make: onnxruntime's memory
                # arena grows to its peak now, at start-up, rather than under load.
                # Off the event loop, so /healthz and /readyz keep answering meanwhile.
                width, height = engine.preprocessing["resize"]
                largest = max(self.config.max_images, self.config.max_batch_size)
                blank = np.zeros((largest, height, width, 3), np.float32)
                off_event_loop(partial(engine.caption, blank, beam_size=2))
            self.ready.set()
            log.info("ready: warm-up captions done for %s", ", ".join(self.engines))
        except Exception:  # readiness stays false, and /readyz says so
            log.exception("warm-up caption failed")


def create_app(config: Config | None = None) -> Flask:
    """Build the app: load and check the bundle, start the warm-up, register the routes."""
    config = config or Config.from_env()
    engines = {name: CaptionEngine(bundle, config)
               for name, bundle in load_bundles(config.bundle_paths, config.verify_checksums).items()}
    for name, engine in engines.items():
        check = engine.bundle.variant_check()
        if check and check["agreement"] < VARIANT_AGREEMENT_WARNING:
            log.warning("bundle %s: its greedy captions equal its float32 source's on only %s held-out images",
                        name, check["greedy_captions_identical"])

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_upload_bytes
    state = ModelState(engines, config)
    app.extensions["captions"] = state
    if config.warmup:
        threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
    else:
        state.ready.set()

    from . import observability
    from .api import api
    from .web import web
    observability.install(app, [(name, e.bundle.manifest.get("created"), e.active_providers)
                                for name, e in engines.items()])
    app.register_blueprint(api)
    app.register_blueprint(web)

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = {413: f"the request is larger than {config.max_upload_mb:g} MB"}.get(exc.code, exc.description)
        # Keep what the exception says beyond its HTML body: Allow on a 405 (RFC 9110), say.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code or 500, code, message, headers)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server failed to caption this request")

    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    """The one error shape of the API: {"error": {"code", "message"}}."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response
