"""The Flask app in-process: readiness, in-memory uploads, and no stack traces for failures."""
import io

import pytest
from PIL import Image
from werkzeug import formparser

from server.app import create_app
from server.config import Config


@pytest.fixture(scope="module")
def app(bundle_dir):
    return create_app(Config(bundle=bundle_dir, warmup=False))


def png(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def test_readiness_follows_the_warm_up(app):
    state = app.extensions["captions"]
    client = app.test_client()
    state.ready.clear()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json == {"status": "starting"}
    state.warm_up()
    assert client.get("/readyz").status_code == 200


def test_large_uploads_never_touch_the_disk(app, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")
    monkeypatch.setattr(formparser, "SpooledTemporaryFile", no_disk)
    data = png((900, 700))
    assert len(data) > 1024 * 500  # past werkzeug's in-memory threshold
    response = app.test_client().post("/api/v1/captions", data={"image": (io.BytesIO(data), "big.png")})
    assert response.status_code == 200, response.json


def test_an_internal_failure_is_a_json_500_without_details(app, monkeypatch):
    engine = app.extensions["captions"].engine

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(engine, "caption", broken)
    response = app.test_client().post("/api/v1/captions", data={"image": (io.BytesIO(png()), "a.png")})
    assert response.status_code == 500
    assert response.json == {"error": {"code": "internal_error", "message": "the server failed to caption this request"}}
    assert b"secret" not in response.data and b"Traceback" not in response.data


def test_length_limit_and_beam_results_are_consistent(app):
    client = app.test_client()
    data = png()
    for beam in (1, 2, 5):
        body = client.post(f"/api/v1/captions?beam_size={beam}&max_length=3",
                           data={"image": (io.BytesIO(data), "a.png")}).json
        assert len(body["captions"][0]["tokens"]) <= 3
