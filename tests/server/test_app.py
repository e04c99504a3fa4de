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
    readiness = app.extensions["readiness"]
    client = app.test_client()
    readiness.ready.clear()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json == {"status": "starting"}
    readiness.warm_up()
    assert client.get("/readyz").status_code == 200


def test_the_warm_up_takes_a_jpeg_and_a_png_through_the_upload_path(app, monkeypatch):
    from server import registry

    seen = []
    real = registry.preprocess_uploads

    def recording(uploads, config, engine, previews=False):
        inputs, shown = real(uploads, config, engine, previews)
        seen.append(([Image.open(io.BytesIO(u)).format for u in uploads], inputs.shape[0], len(shown)))
        return inputs, shown

    monkeypatch.setattr(registry, "preprocess_uploads", recording)
    app.extensions["readiness"].warm_up()
    assert seen == [(["JPEG", "PNG"], 2, 2)]


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


def test_a_chunked_body_over_the_limit_is_refused_not_truncated(bundle_dir):
    small = create_app(Config(bundle=bundle_dir, warmup=False, max_upload_mb=0.01))
    body = png((256, 256))
    assert len(body) > 0.01 * 1024 * 1024
    response = small.test_client().post("/api/v1/captions", input_stream=io.BytesIO(body),
                                        headers={"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
    assert response.status_code == 413 and response.json["error"]["code"] == "request_entity_too_large"
    fits = small.test_client().post("/api/v1/captions", input_stream=io.BytesIO(png((8, 8))),
                                    headers={"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
    assert fits.status_code == 200, fits.json


def test_method_not_allowed_says_what_is(app):
    response = app.test_client().put("/api/v1/captions")
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert app.test_client().delete("/healthz").headers["Allow"]


class RecordedBody(io.BytesIO):
    """A request body that remembers the size of every read."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads = []

    def read(self, size=-1):
        self.reads.append(size)
        return super().read(size)


def test_a_body_refused_unread_is_discarded_in_large_pieces(app):
    # gunicorn would discard it 1 KB at a time on the event loop, copying the rest each time.
    body = RecordedBody(b"x" * 550_000)
    response = app.test_client().post("/api/v1/captions", input_stream=body,
                                      headers={"Content-Type": "text/plain", "Content-Length": "550000"})
    assert response.status_code == 415
    assert body.tell() == 550_000 and len(body.reads) <= 3


def test_a_post_with_nothing_in_it_is_400_no_image(app):
    """No body and no Content-Type is "no image" (400), as the docs' table says, not a wrong type."""
    response = app.test_client().post("/api/v1/captions")
    assert response.status_code == 400 and response.json["error"]["code"] == "missing_image"
    wrong_type = app.test_client().post("/api/v1/captions", data=b"x", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415


def test_multipart_without_a_boundary_is_named(app):
    response = app.test_client().post("/api/v1/captions", data=b"--x\r\n",
                                      headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400 and response.json["error"]["code"] == "malformed_multipart"
    assert "boundary" in response.json["error"]["message"]


@pytest.mark.parametrize("value", ["+3", "1_0", "\u0663", " 3 3", " 3", "3 ", "3.0", "99999999999999999999999"])
def test_integer_parameters_are_plain_ascii_digits(app, value):
    response = app.test_client().post("/api/v1/captions", query_string={"beam_size": value},
                                      data={"image": (io.BytesIO(png()), "a.png")})
    assert response.status_code == 422 and response.json["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("where", ["query", "form"])
@pytest.mark.parametrize("value", ["0", "1", "True", "FALSE", " false", "yes"])
def test_booleans_are_true_or_false_as_the_document_writes_them(app, value, where):
    image = {"image": (io.BytesIO(png()), "a.png")}
    if where == "query":
        response = app.test_client().post("/api/v1/captions", query_string={"attention": value}, data=image)
    else:
        response = app.test_client().post("/api/v1/captions", data={**image, "attention": value})
    assert response.status_code == 422
    assert response.json["error"]["message"] == f"attention must be true or false, got {value!r}"
    assert app.test_client().post("/api/v1/captions?attention=false",
                                  data={"image": (io.BytesIO(png()), "a.png")}).status_code == 200


@pytest.mark.parametrize("name, value, limits", [("length_penalty", "-1", "0 and 5"), ("beam_size", "-2", "1 and 10"),
                                                 ("beam_size", "-99999999999999999999999", "1 and 10")])
def test_a_negative_number_is_named_out_of_range(app, name, value, limits):
    response = app.test_client().post("/api/v1/captions", query_string={name: value},
                                      data={"image": (io.BytesIO(png()), "a.png")})
    assert response.status_code == 422
    assert response.json["error"]["message"] == f"{name} must be between {limits}, got {value}"


def test_metrics_content_type_has_one_charset(app):
    content_type = app.test_client().get("/metrics").headers["Content-Type"]
    assert content_type.count("charset") == 1 and content_type.startswith("text/plain")


def test_onnxruntime_telemetry_is_turned_off(bundle_dir, monkeypatch):
    import onnxruntime as ort

    calls = []
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append(True))
    create_app(Config(bundle=bundle_dir, warmup=False))
    assert calls


def test_readiness_says_why_a_worker_should_get_no_traffic(app, monkeypatch):
    from server import lifecycle

    state, client = app.extensions["captions"], app.test_client()
    model = state.models[state.default]
    monkeypatch.setattr(model.batcher, "queued_images", model.batcher.limits.max_queue_images)
    assert client.get("/readyz").status_code == 503 and client.get("/readyz").json == {"status": "saturated"}
    monkeypatch.setattr(model.batcher, "queued_images", 0)
    monkeypatch.setattr(lifecycle, "draining", lambda: True)
    assert client.get("/readyz").json == {"status": "draining"}


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(bundle_dir, monkeypatch):
    from server import uploads

    budget = create_app(Config(bundle=bundle_dir, warmup=False, max_request_pixels=3 * 64 * 48 - 1))
    decoded = []
    load = uploads.load_rgb
    monkeypatch.setattr("server.captioning.load_rgb", lambda image: decoded.append(image.size) or load(image))
    three = [("image", (io.BytesIO(png()), f"{i}.png")) for i in range(3)]
    response = budget.test_client().post("/api/v1/captions", data={"image": [f for _, f in three]})
    assert response.status_code == 413 and response.json["error"]["code"] == "request_too_large"
    assert "9,215 per request" in response.json["error"]["message"] and decoded == []
    two = [(io.BytesIO(png()), f"{i}.png") for i in range(2)]
    assert budget.test_client().post("/api/v1/captions", data={"image": two}).status_code == 200
    assert decoded == [(64, 48), (64, 48)]


def test_a_short_deadline_is_answered_503_with_retry_after(app):
    client = app.test_client()
    response = client.post("/api/v1/captions", query_string={"timeout_ms": "1"},
                           data={"image": (io.BytesIO(png((2000, 2000))), "a.png")})
    assert response.status_code == 503 and response.json["error"]["code"] == "deadline_exceeded"
    assert int(response.headers["Retry-After"]) >= 1
    too_long = client.post("/api/v1/captions", query_string={"timeout_ms": "999999"},
                           data={"image": (io.BytesIO(png()), "a.png")})
    assert too_long.status_code == 422 and "timeout_ms must be between 1 and 5000" in too_long.json["error"]["message"]
