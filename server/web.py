"""The upload form: server-rendered HTML that works without JavaScript."""
from __future__ import annotations

import base64

from flask import Blueprint, current_app, g, make_response, render_template, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from . import tracing
from .api_keys import CHALLENGE, is_valid, presented_key
from .client_probe import client_connected
from .errors import RequestError

web = Blueprint("web", __name__)


def _data_url(jpeg: bytes) -> str:
    """The preview as a data: URL, so nothing is stored and no second request is needed."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _form(state, status=200, engine=None, headers=None, **context):
    """The form's page; one that carries an API key back in its field is never stored by a cache."""
    engine = engine or state.engine
    defaults = {"model": engine.bundle.summary(), "models": list(state.engines), "max_beam": state.config.max_beam_size,
                "beam_size": state.config.default_beam_size, "max_mb": state.config.max_upload_mb,
                "keys_required": bool(state.config.api_key_set), "api_key": ""}
    page = make_response(render_template("index.html", **{**defaults, **context}), status)
    page.headers.update(headers or {})
    if context.get("api_key"):
        page.headers["Cache-Control"] = "no-store"
    return page


@web.get("/")
def index():
    return _form(current_app.extensions["captions"])


@web.post("/")
def upload():
    state = current_app.extensions["captions"]
    engine = state.engine
    keys = state.config.api_key_set
    # The page keeps the key it was given in its field, so each later submission from it carries it.
    try:
        key = request.form.get("api_key", "").strip() if keys else ""
    except RequestEntityTooLarge:
        return _form(state, 413, error=f"That file is larger than {state.config.max_upload_mb:g} MB.")
    if keys and not is_valid(presented_key(request.headers.get("Authorization")) or key.encode() or None, keys):
        g.error_code = "unauthorized"
        message = "Enter a valid API key." if not key else "That API key is not valid."
        return _form(state, 401, error=message, headers={"WWW-Authenticate": CHALLENGE})
    try:
        state.refuse_when_full()
        # A field the person left empty means its default (the API, stricter, refuses an empty value).
        with tracing.stage("read body"):
            fields = MultiDict([(k, v) for k, v in request.form.items(multi=True) if v.strip()])
        model = state.model_named_in(fields)
        engine = model.engine
        file = request.files.get("image")
        if file is None or not file.filename:
            raise RequestError(400, "missing_image", "Choose an image file to caption.")
        options = model.options(fields)
        options.attention = engine.has_attention  # the page draws where each word looked, when the model says
        result = model.caption_uploads([file.read()], options, g.started, client_connected(request.environ),
                                       previews=True)
    except RequestEntityTooLarge:
        return _form(state, 413, error=f"That file is larger than {state.config.max_upload_mb:g} MB.", api_key=key)
    except RequestError as exc:
        return _form(state, exc.status, engine, exc.headers, error=exc.message[:1].upper() + exc.message[1:],
                     api_key=key)
    best = result["captions"][0]
    looked = {"tokens": best["tokens"], **best["attention"]} if "attention" in best else None
    return _form(state, engine=engine, caption=best["caption"], beams=result["beams"][0],
                 timings=result["timings_ms"], preview=_data_url(result["previews"][0]),
                 beam_size=options.beam_size, filename=file.filename, attention=looked, api_key=key)
