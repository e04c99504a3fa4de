"""The real gunicorn server, every route, with good and bad requests."""
import html
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests

from harness.server_process import ROOT, GunicornServer


def image_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def heldout(trained_run):
    return json.loads((trained_run / "heldout.json").read_text())


def test_health_ready_model(server, bundle_dir):
    assert requests.get(server.url + "/healthz").json() == {"status": "ok"}
    assert requests.get(server.url + "/readyz").json() == {"status": "ready"}
    model = requests.get(server.url + "/api/v1/model").json()
    assert model["name"] == bundle_dir.name
    assert model["encoder_weights_random"] is True
    assert model["providers"] == ["CPUExecutionProvider"]


def test_served_greedy_captions_equal_keras(server, heldout):
    for item in heldout[:10]:
        response = requests.post(server.url + "/api/v1/captions", files={"image": image_bytes(Path(item["image"]))})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["captions"][0]["caption"] == item["keras_greedy"]
        assert body["captions"][0]["tokens"] == item["keras_greedy"].split()
        assert set(body["timings_ms"]) == {"preprocess", "queue", "encode", "decode", "total"}  # micro-batching on
        assert body["model"]["providers"] == ["CPUExecutionProvider"]


def test_several_images_keep_upload_order_and_beam_five(server, heldout):
    items = heldout[:4]
    files = [("image", (f"{i}.jpg", image_bytes(Path(item["image"])), "image/jpeg")) for i, item in enumerate(items)]
    greedy = requests.post(server.url + "/api/v1/captions", files=files).json()["captions"]
    assert [c["caption"] for c in greedy] == [item["keras_greedy"] for item in items]
    beam = requests.post(server.url + "/api/v1/captions", files=files, data={"beam_size": "5"})
    assert beam.status_code == 200
    captions = beam.json()["captions"]
    assert len(captions) == 4
    for c in captions:
        assert c["log_prob"] <= 0 and c["caption"] == " ".join(c["tokens"])


def test_beam_size_over_http_is_the_engines_beam_search(server, bundle_dir, heldout):
    """beam_size=5 answers what the engine's beam 5 answers in-process, and on some held-out
    scenes that is not the greedy caption: a server that ignored beam_size would fail here."""
    from batch.files import caption_files
    from bundle.format import load_bundle
    from server.config import Config
    from server.engine import CaptionEngine

    config = Config()
    engine = CaptionEngine(load_bundle(bundle_dir), config.engine_options())
    paths = [item["image"] for item in heldout[:24]]
    [rows] = caption_files(engine, paths, config.max_pixels, 5, config.length_penalty, batch_size=len(paths))
    differ = [(path, row) for path, row, item in zip(paths, rows, heldout) if row["caption"] != item["keras_greedy"]][:8]
    assert differ, "beam 5 equals greedy on every scene: nothing here could tell them apart"
    files = [("image", (f"{i}.jpg", image_bytes(Path(path)), "image/jpeg")) for i, (path, _) in enumerate(differ)]
    served = requests.post(server.url + "/api/v1/captions", files=files, data={"beam_size": "5"}).json()["captions"]
    assert [c["caption"] for c in served] == [row["caption"] for _, row in differ]
    assert [c["log_prob"] for c in served] == pytest.approx([row["log_prob"] for _, row in differ], abs=1e-3)


def test_raw_body_and_query_parameters(server, heldout):
    data = image_bytes(Path(heldout[0]["image"]))
    response = requests.post(server.url + "/api/v1/captions?beam_size=1&max_length=2", data=data,
                             headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    assert len(response.json()["captions"][0]["tokens"]) <= 2


@pytest.mark.parametrize("kwargs, status, code", [
    ({"files": {"image": b""}}, 400, "empty_image"),
    ({"files": {"picture": b"x"}}, 400, "missing_image"),
    ({"files": {"image": b"plain text, not an image"}}, 415, "unsupported_media_type"),
    ({"data": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "unsupported_media_type"),
    ({"files": {"image": b"x"}, "data": {"beam_size": "11"}}, 422, "invalid_parameter"),
    ({"files": {"image": b"x"}, "data": {"beam_size": "wide"}}, 422, "invalid_parameter"),
    ({"files": {"image": b"x"}, "data": {"max_length": "0"}}, 422, "invalid_parameter"),
])
def test_bad_requests_get_json_errors(server, kwargs, status, code):
    response = requests.post(server.url + "/api/v1/captions", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_oversize_and_too_many(server, heldout):
    big = b"\xff" * (11 * 1024 * 1024)
    response = requests.post(server.url + "/api/v1/captions", data=big, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_entity_too_large"
    data = image_bytes(Path(heldout[0]["image"]))
    response = requests.post(server.url + "/api/v1/captions", files=[("image", data)] * 17)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_images"


def test_unknown_route_and_wrong_method(server):
    response = requests.get(server.url + "/nowhere")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = requests.get(server.url + "/api/v1/captions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_openapi_document_matches_the_api(server):
    doc = requests.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    protocol = {prefix + route for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
                for route in ("", "/ready", "/config", "/infer")}
    assert set(doc["paths"]) == {"/api/v1/captions", "/api/v1/model", "/api/v1/models", "/healthz", "/readyz",
                                 "/metrics", "/openapi.json", "/v2", "/v2/health/live", "/v2/health/ready"} | protocol
    post = doc["paths"]["/api/v1/captions"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"beam_size", "max_length", "length_penalty", "attention",
                                                       "model", "timeout_ms"}
    schema = doc["components"]["schemas"]["Captions"]
    assert set(schema["required"]) == {"captions", "model", "timings_ms"}
    for status in ("400", "413", "415", "422", "503"):
        assert status in post["responses"]
    assert "Retry-After" in post["responses"]["503"]["headers"]


def test_web_form_and_result_page(server, heldout):
    page = requests.get(server.url + "/")
    assert page.status_code == 200 and 'type="file"' in page.text and 'name="beam_size"' in page.text
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options"):
        assert header in page.headers
    counts = Counter(item["keras_greedy"] for item in heldout)
    item = next(item for item in heldout if counts[item["keras_greedy"]] == 1)  # no other scene has its caption
    result = requests.post(server.url + "/", files={"image": ("scene.jpg", image_bytes(Path(item["image"])))},
                           data={"beam_size": "1"})
    assert result.status_code == 200
    assert "data:image/jpeg;base64," in result.text and "beam width 1" in result.text
    assert re.search(r'id="caption"[^>]*>\s*' + re.escape(html.escape(item["keras_greedy"])) + r"\s*<", result.text)
    bad = requests.post(server.url + "/", files={"image": ("<script>x</script>.png", b"not an image")})
    assert bad.status_code == 415
    assert 'role="alert"' in bad.text and "not an image in a supported format" in bad.text
    assert "<script>x</script>" not in bad.text
    assert requests.get(server.url + "/static/style.css").status_code == 200


def test_worker_never_loads_tensorflow(server):
    pids = subprocess.run(["pgrep", "-f", f"caption-server.*{server.port}|gunicorn"], capture_output=True, text=True)
    maps = [Path(f"/proc/{pid}/maps") for pid in pids.stdout.split()]
    checked = 0
    for path in maps:
        try:
            text = path.read_text()
        except OSError:
            continue
        if "onnxruntime" in text:  # a worker that holds the model
            checked += 1
            # TensorFlow's own libraries (OpenVINO's TensorFlow frontend, libopenvino_tensorflow_frontend, is not it)
            assert not re.search(r"/tensorflow/|libtensorflow", text)
    assert checked >= 1


def test_server_code_never_imports_tensorflow(bundle_dir):
    code = ("import sys; from server.app import create_app; from server.config import Config;"
            f"app = create_app(Config(bundle={str(bundle_dir)!r}, warmup=False));"
            "c = app.test_client(); import numpy, io; from PIL import Image; b = io.BytesIO();"
            "Image.new('RGB', (50, 50), 'red').save(b, 'PNG');"
            "r = c.post('/api/v1/captions', data={'image': (io.BytesIO(b.getvalue()), 'a.png')});"
            "assert r.status_code == 200, r.data;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')];"
            "print('imported:', bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cuda_request_falls_back_to_cpu_or_fails_in_strict_mode(bundle_dir):
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "CAPTION_PROVIDERS": "cuda,cpu"})
    try:
        srv.wait_ready()
        assert requests.get(srv.url + "/api/v1/model").json()["providers"] == ["CPUExecutionProvider"]
        assert "cuda not available" in srv.output()
    finally:
        srv.stop()
    strict = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "CAPTION_PROVIDERS": "cuda",
                             "CAPTION_STRICT_PROVIDERS": "1"})
    try:
        assert strict.process.wait(60) != 0
    finally:
        strict.stop()
    assert "cuda not available" in strict.output()
