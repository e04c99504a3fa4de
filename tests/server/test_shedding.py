"""Refusals while every queue is full, answered in front of Flask: the same answer Flask gives,
for the captioning routes only, counted and logged as Flask's are."""
import logging

import pytest

from server.config import Config
from server.app import create_app
from server.shedding import ShedWhenFull


@pytest.fixture(scope="module")
def app(bundle_dir):
    return create_app(Config(bundle=bundle_dir, warmup=False))


@pytest.fixture
def full(app, monkeypatch):
    """Every model's queue full."""
    for model in app.extensions["captions"].models.values():
        monkeypatch.setattr(model.batcher, "queued_images", model.batcher.limits.max_queue_images)
    return app


def flask_only(app, monkeypatch):
    """The app with the shedding taken out: Flask's own answer to the same request."""
    assert isinstance(app.wsgi_app, ShedWhenFull)
    monkeypatch.setattr(app, "wsgi_app", app.wsgi_app.wsgi_app)
    return app


@pytest.mark.parametrize("path", ["/api/v1/captions", "/v2/models/{name}/infer", "/v2/models/{name}/versions/1/infer"])
def test_a_refusal_is_the_answer_flask_gives(full, bundle_dir, monkeypatch, path):
    path = path.format(name=bundle_dir.name)
    calls = []
    full.before_request_funcs.setdefault(None, []).insert(0, lambda: calls.append(1))
    try:
        shed = full.test_client().post(path, data=b"x" * 5000, headers={"Content-Type": "image/jpeg",
                                                                         "X-Request-ID": "shed-1"})
        assert not calls  # Flask never saw it
        flask = flask_only(full, monkeypatch).test_client().post(
            path, data=b"x" * 5000, headers={"Content-Type": "image/jpeg", "X-Request-ID": "shed-1"})
        assert calls
    finally:
        full.before_request_funcs[None].pop(0)
    assert shed.status_code == flask.status_code == 503
    assert shed.json == flask.json and "busy" in str(shed.json)
    assert dict(shed.headers) == {**dict(flask.headers), "Content-Length": shed.headers["Content-Length"]}
    assert shed.headers["X-Request-ID"] == "shed-1" and int(shed.headers["Retry-After"]) >= 1


def test_only_captioning_requests_for_served_models_are_refused_there(full, bundle_dir):
    client = full.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json == {"status": "saturated"}
    unknown = client.post("/v2/models/nobody/infer", data=b"{}")
    assert unknown.status_code == 404  # Flask's answer: no such model
    assert client.post(f"/v2/models/{bundle_dir.name}/versions/7/infer", data=b"{}").status_code == 404
    form = client.post("/", data={"image": (b"x", "x.jpg")})
    assert form.status_code == 503 and "text/html" in form.headers["Content-Type"]  # the form's own page


def test_a_refusal_is_counted_and_logged_as_one_line(full, caplog):
    from prometheus_client import REGISTRY

    def count(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (count("caption_http_requests_total", route="/api/v1/captions", method="POST", status="503"),
              count("caption_requests_shed_total", reason="queue_full"))
    with caplog.at_level(logging.INFO, logger="caption.access"):
        full.test_client().post("/api/v1/captions", data=b"x", headers={"Content-Type": "image/png",
                                                                         "X-Request-ID": "shed-2"})
    after = (count("caption_http_requests_total", route="/api/v1/captions", method="POST", status="503"),
             count("caption_requests_shed_total", reason="queue_full"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == "shed-2"]
    assert line.getMessage() == "POST /api/v1/captions 503 overloaded" and line.error_code == "overloaded"
