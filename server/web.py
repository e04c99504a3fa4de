"""The upload form: server-rendered HTML that works without JavaScript."""
from __future__ import annotations

import base64
import io

from flask import Blueprint, current_app, render_template, request
from werkzeug.exceptions import RequestEntityTooLarge

from .captioning import caption_uploads, parse_options
from .errors import RequestError
from .observability import observe_stages

web = Blueprint("web", __name__)
PREVIEW_SIZE = (640, 640)


def _preview(image) -> str:
    """A small JPEG of the upload as a data: URL, so nothing is stored and no second request is needed."""
    thumbnail = image.copy()
    thumbnail.thumbnail(PREVIEW_SIZE)
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _form(state, status=200, engine=None, **context):
    engine = engine or state.engine
    defaults = {"model": engine.bundle.summary(), "models": list(state.engines), "max_beam": state.config.max_beam_size,
                "beam_size": state.config.default_beam_size, "max_mb": state.config.max_upload_mb}
    return render_template("index.html", **{**defaults, **context}), status


@web.get("/")
def index():
    return _form(current_app.extensions["captions"])


@web.post("/")
def upload():
    state = current_app.extensions["captions"]
    engine = state.engine
    try:
        engine = state.engine_for(request.form.get("model"))
        file = request.files.get("image")
        if file is None or not file.filename:
            raise RequestError(400, "missing_image", "Choose an image file to caption.")
        options = parse_options(request.form, state.config, engine.max_length)
        result = caption_uploads(engine, [file.read()], options, state.config, state.caption_function(engine))
        observe_stages(result["timings_ms"])
    except RequestEntityTooLarge:
        return _form(state, 413, error=f"That file is larger than {state.config.max_upload_mb:g} MB.")
    except RequestError as exc:
        return _form(state, exc.status, engine, error=exc.message[:1].upper() + exc.message[1:])
    return _form(state, engine=engine, caption=result["captions"][0]["caption"], beams=result["beams"][0],
                 timings=result["timings_ms"], preview=_preview(result["images"][0]),
                 beam_size=options.beam_size, filename=file.filename)
