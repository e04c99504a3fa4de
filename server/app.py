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

from .batching import MicroBatcher, off_event_loop
from .bundle import load_bundles
from .errors import RequestError
from .config import Config
from .engine import CaptionEngine

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
    """The engines of this process (one per model, the first is the default) and whether
    their warm-up captions have run."""

    def __init__(self, engines: dict[str, CaptionEngine], config: Config):
        self.engines, self.config = engines, config
        self.default = next(iter(engines))
        self.ready = threading.Event()
        self.batchers = ({name: MicroBatcher(engine, config.max_images) for name, engine in engines.items()}
                         if config.micro_batching else {})

    @property
    def engine(self) -> CaptionEngine:
        return self.engines[self.default]

    def engine_for(self, name: str | None) -> CaptionEngine:
        """The engine of model `name` (the default when empty); a RequestError names the choices."""
        if not name:
            return self.engine
        if name not in self.engines:
            raise RequestError(422, "unknown_model", f"no model named {name[:60]!r}; "
                                                     f"choose from {', '.join(self.engines)}")
        return self.engines[name]

    def caption_function(self, engine: CaptionEngine):
        """What captions for `engine`: its micro-batcher when batching is on, else the engine itself."""
        batcher = self.batchers.get(engine.bundle.name)
        return batcher.caption if batcher else engine.caption

    def warm_up(self) -> None:
        try:
            for engine in self.engines.values():
                # The largest batch a request (or a micro-batch) can make: onnxruntime's memory
                # arena grows to its peak now, at start-up, rather than under load.
                # Off the event loop, so /healthz and /readyz keep answering meanwhile.
                width, height = engine.preprocessing["resize"]
                blank = np.zeros((self.config.max_images, height, width, 3), np.float32)
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
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = {413: f"the request is larger than {config.max_upload_mb:g} MB"}.get(exc.code, exc.description)
        return error_response(exc.code or 500, code, message)

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


def error_response(status: int, code: str, message: str):
    """The one error shape of the API: {"error": {"code", "message"}}."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response
