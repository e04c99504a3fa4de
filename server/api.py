"""JSON API routes: captions, model summary, health, readiness and the OpenAPI document."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import observability as metrics
from . import tracing
from .client_probe import client_connected
from .errors import RequestError
from .openapi import openapi_document

api = Blueprint("api", __name__)

RAW_BODY_TYPES = ("image/", "application/octet-stream")


def _state():
    return current_app.extensions["captions"]


def model_info(engine) -> dict:
    return {"name": engine.bundle.name, "created": engine.bundle.manifest.get("created"),
            "providers": engine.active_providers}


def read_raw_body(limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes however it is sent."""
    if request.content_length is not None:  # werkzeug has refused one declared over the limit
        return request.get_data(cache=False)
    # Chunked: werkzeug would stop reading at the limit and hand over a truncated image.
    data = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def read_uploads(limit: int) -> list[bytes]:
    """Image bytes in upload order: every multipart field 'image', or the raw request body."""
    content_type = request.mimetype or ""
    if content_type == "multipart/form-data":
        if not request.mimetype_params.get("boundary"):
            raise RequestError(400, "malformed_multipart",
                               "the multipart/form-data Content-Type has no boundary parameter")
        files = request.files.getlist("image")
        if not files:
            others = sorted(request.files)
            hint = f" (got file field(s) {', '.join(map(repr, others))})" if others else ""
            raise RequestError(400, "missing_image", "send the image in the multipart field 'image'" + hint)
        return [f.read() for f in files]
    if content_type.startswith(RAW_BODY_TYPES):
        return [read_raw_body(limit)]
    if not content_type and not request.content_length and "chunked" not in request.headers.get("Transfer-Encoding", ""):
        raise RequestError(400, "missing_image", "no image: send multipart/form-data with a field 'image', "
                                                 "or the image as the body with an image/* Content-Type")
    raise RequestError(415, "unsupported_media_type",
                       "send multipart/form-data with a field 'image', or an image body with an image/* content type")


@api.post("/api/v1/captions")
def captions():
    state = _state()
    state.refuse_when_full()
    with tracing.stage("read body"):
        uploads = read_uploads(state.config.max_upload_bytes)
    model = state.model_named_in(request.values)
    result = model.caption_uploads(uploads, model.options(request.values), g.started, client_connected(request.environ))
    return jsonify({"captions": result["captions"], "model": model_info(model.engine),
                    "timings_ms": result["timings_ms"]})


def model_summary(engine) -> dict:
    summary = {**engine.bundle.summary(), "providers": engine.active_providers}
    if engine.choice is not None:
        summary["execution_path"] = engine.choice.summary()
    return summary


@api.get("/api/v1/model")
def model():
    return jsonify(model_summary(_state().engine))


@api.get("/api/v1/models")
def models():
    state = _state()
    return jsonify({"default": state.default, "models": [model_summary(e) for e in state.engines.values()]})


@api.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@api.get("/readyz")
def readyz():
    """200 when this worker should get traffic; 503 while it starts, drains or has a full queue."""
    status = current_app.extensions["readiness"].status()
    return jsonify({"status": status}), 200 if status == "ready" else 503


@api.get("/metrics")
def prometheus_metrics():
    return metrics.metrics_response()


@api.get("/openapi.json")
def openapi():
    state = _state()
    return jsonify(openapi_document(state.config, max(e.max_length for e in state.engines.values()),
                                    list(state.engines), [n for n, e in state.engines.items() if e.has_attention]))
