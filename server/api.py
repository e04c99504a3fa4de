"""JSON API routes: captions, model summary, health, readiness and the OpenAPI document."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from .captioning import caption_uploads, parse_options
from .errors import RequestError
from .observability import metrics_response, observe_stages
from .openapi import openapi_document

api = Blueprint("api", __name__)

RAW_BODY_TYPES = ("image/", "application/octet-stream")


def _state():
    return current_app.extensions["captions"]


def model_info(engine) -> dict:
    return {"name": engine.bundle.name, "created": engine.bundle.manifest.get("created"),
            "providers": engine.active_providers}


def read_uploads() -> list[bytes]:
    """Image bytes in upload order: every multipart field 'image', or the raw request body."""
    content_type = request.mimetype or ""
    if content_type == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            others = sorted(request.files)
            hint = f" (got file field(s) {', '.join(map(repr, others))})" if others else ""
            raise RequestError(400, "missing_image", "send the image in the multipart field 'image'" + hint)
        return [f.read() for f in files]
    if content_type.startswith(RAW_BODY_TYPES):
        return [request.get_data(cache=False)]
    raise RequestError(415, "unsupported_media_type",
                       "send multipart/form-data with a field 'image', or an image body with an image/* content type")


@api.post("/api/v1/captions")
def captions():
    state = _state()
    uploads = read_uploads()
    engine = state.engine_for(request.values.get("model"))
    options = parse_options(request.values, state.config, engine.max_length)
    result = caption_uploads(engine, uploads, options, state.config, state.caption_function(engine))
    observe_stages(result["timings_ms"])
    return jsonify({"captions": result["captions"], "model": model_info(engine), "timings_ms": result["timings_ms"]})


def model_summary(engine) -> dict:
    return {**engine.bundle.summary(), "providers": engine.active_providers}


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
    if _state().ready.is_set():
        return jsonify({"status": "ready"})
    return jsonify({"status": "starting"}), 503


@api.get("/metrics")
def metrics():
    return metrics_response()


@api.get("/openapi.json")
def openapi():
    state = _state()
    return jsonify(openapi_document(state.config, max(e.max_length for e in state.engines.values()),
                                    list(state.engines)))
