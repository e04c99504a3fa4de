"""The Flask application factory: configuration, the model, blueprints, errors, headers.

Run under gunicorn (see gunicorn.conf.py): `gunicorn -c gunicorn.conf.py`.
"""
from __future__ import annotations

import io
import logging
import threading

from flask import Flask, Request, g, jsonify, request
from werkzeug.exceptions import HTTPException

from bundle.format import OPENVINO_BF16_PARITY, load_bundles

from .answers import SECURITY_HEADERS, discard_unread_body, error_body
from .api_keys import CHALLENGE, is_valid, presented_key, route_is_open
from .config import Config
from .path_choice import engine_for
from .errors import RequestError
from .multipart import FastFormDataParser
from .openvino_encoder import OpenVINOEncoder
from .registry import ModelRegistry, Readiness
from .shedding import ShedWhenFull

log = logging.getLogger(__name__)


class InMemoryRequest(Request):
    """Werkzeug spools large multipart files to temporary files; uploads stay in memory here
    (the body is already capped by MAX_CONTENT_LENGTH, so memory is bounded), and forms are
    split by server/multipart.py where they are strictly formed."""

    form_data_parser_class = FastFormDataParser

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def create_app(config: Config | None = None) -> Flask:
    """Build the app: load and check the bundle, start the warm-up, register the routes."""
    config = config or Config.from_env()
    engines = {name: engine_for(bundle, config)
               for name, bundle in load_bundles(config.bundle_paths, config.verify_checksums).items()}
    for name, engine in engines.items():
        # The variant tools refuse a variant that loses quality; one written with the gate opened
        # (as `make bench` does for the int8 speed figures) still serves, with a warning.
        check = engine.bundle.variant_check()
        if check and not check.get("passed", False):
            log.warning("bundle %s: its held-out %s is %s against its float32 source's %s (greedy captions "
                        "identical on %s): below the quality gate", name, check.get("metric"), check.get("variant"),
                        check.get("float32"), check["greedy_captions_identical"])
        if isinstance(engine.encoder, OpenVINOEncoder) and engine.encoder.precision == "bf16":
            gate = engine.bundle.manifest.get("provenance", {}).get("parity", {}).get(OPENVINO_BF16_PARITY)
            if gate is None:
                log.warning("bundle %s: its encoder runs in bf16 on OpenVINO, which nobody checked on held-out "
                            "images (python -m export.openvino_check)", name)
            else:
                (log.info if gate["passed"] else log.warning)(
                    "bundle %s: OpenVINO bf16 encoder, %s %.3f against float32's %.3f on %d held-out images "
                    "(%s); greedy captions identical %s", name, gate["metric"], gate["bf16"], gate["fp32"],
                    gate["images"], "within the gate" if gate["passed"] else "FAILED the gate",
                    gate["greedy_captions_identical"])

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_upload_bytes
    registry = ModelRegistry(engines, config)
    readiness = Readiness(registry)
    app.extensions["captions"] = registry
    app.extensions["readiness"] = readiness
    if config.warmup:
        threading.Thread(target=readiness.warm_up, name="warm-up", daemon=True).start()
    else:
        readiness.ready.set()

    from . import observability, tracing
    from .api import api
    from .inference_protocol import v2
    from .web import web
    # Here, in each worker after gunicorn's fork, so that the export thread runs where spans are made.
    tracing.start()
    observability.install(app, [(name, e.bundle.manifest.get("created"), e.active_providers, e.choice.path.name)
                                for name, e in engines.items()])
    if config.api_key_set:
        require_api_keys(app, config.api_key_set)
    app.register_blueprint(api)
    app.register_blueprint(v2)
    app.register_blueprint(web)
    app.wsgi_app = ShedWhenFull(app.wsgi_app, registry, config.max_upload_bytes)

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
    def discard_the_rest_of_the_body(response):
        discard_unread_body(request.environ, request.content_length, config.max_upload_bytes)
        return response

    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


def require_api_keys(app: Flask, keys: tuple[bytes, ...]) -> None:
    """Refuse (401) a request to a route that needs a key without a valid one (server/api_keys.py).
    Registered after the request ids and metrics, so that a refusal is counted and logged like any other."""
    @app.before_request
    def check_api_key():
        rule = request.url_rule.rule if request.url_rule else None
        if route_is_open(request.method, rule) or (request.method, rule) == ("POST", "/"):
            return None  # the form's submission carries its key in a field: web.upload checks it
        if not is_valid(presented_key(request.headers.get("Authorization")), keys):
            raise RequestError(401, "unauthorized", "this route needs an API key: send the header "
                                                    "'Authorization: Bearer <key>'", {"WWW-Authenticate": CHALLENGE})
        return None


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    """An error answer in the shape of the request's API (answers.error_body)."""
    g.error_code = code  # for the request's one access line
    response = jsonify(error_body(request.path, code, message))
    response.status_code = status
    response.headers.update(headers or {})
    return response
