"""The Open Inference Protocol (KServe v2): its codec on its own, the routes in-process, and
tritonclient's HTTP client against the live server, which must caption as /api/v1/captions does."""
import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from server.app import create_app
from server.config import Config
from server.inference_protocol import (HEADER_LENGTH, deserialize_bytes, infer_response, parse_infer_request,
                                       serialize_bytes)
from server.errors import RequestError


def json_request(images: list[bytes], **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                   "data": [base64.b64encode(i).decode() for i in images]}], **extra}).encode()


def binary_request(images: list[bytes], **extra) -> tuple[bytes, dict]:
    blob = serialize_bytes(images)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images), 1],
                                   "parameters": {"binary_data_size": len(blob)}}], **extra}).encode()
    return head + blob, {HEADER_LENGTH: str(len(head))}


# A request of one (not decodable) image, its object left open for more members.
ONE_IMAGE = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aA=="]}]'


# The codec alone.

def test_bytes_elements_round_trip_and_match_tritonclient():
    elements = [b"", b"\xff\xd8\xff", b"x" * 300]
    blob = serialize_bytes(elements)
    assert deserialize_bytes(blob) == elements
    assert list(deserialize_bytes_tensor(blob)) == elements  # the client's own reader agrees
    with pytest.raises(RequestError, match="says 300 bytes"):
        deserialize_bytes(blob[:-1])


def test_json_and_binary_requests_parse_to_the_same_images_and_options():
    images = [b"\x89PNG first", b"\xff\xd8 second"]
    as_json = parse_infer_request(json_request(images, parameters={"beam_size": 3, "length_penalty": 0.5}), None)
    body, headers = binary_request(images, parameters={"beam_size": 3, "length_penalty": 0.5}, id="r1")
    as_binary = parse_infer_request(body, headers[HEADER_LENGTH])
    assert as_json.images == as_binary.images == images
    assert as_json.options.to_dict(flat=False) == {"beam_size": ["3"], "length_penalty": ["0.5"]}
    assert as_binary.id == "r1" and as_json.id is None
    assert as_json.outputs == [("caption", False), ("log_prob", False)]


def test_an_empty_outputs_list_answers_every_output_as_an_absent_one_does():
    outputs = parse_infer_request(ONE_IMAGE + b', "outputs": []}', None).outputs
    assert outputs == [("caption", False), ("log_prob", False)]


@pytest.mark.parametrize("body, header, status, says", [
    (b"not json", None, 400, "not a JSON inference request"),
    (b"[]", None, 400, "JSON object"),
    (b'{"inputs": []}', None, 400, "one input"),
    (b'{"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["aA=="]}]}', None, 400, "'image'"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}', None, 400, "BYTES"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aA=="]}]}', None, 400, "1 elements"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 3], "data": ["aA=="]}]}', None, 400, "shape"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}', None, 400, "base64"),
    (ONE_IMAGE + b', "parameters": {"beam": 2}}', None, 422, "unknown parameter 'beam'"),
    (ONE_IMAGE + b', "parameters": {"beam_size": true}}', None, 422, "must be a number"),
    (ONE_IMAGE + b', "outputs": [{"name": "tokens"}]}', None, 400, "output 'tokens'"),
    # null is not absent, and a number is not its text: what the document forbids is refused.
    (ONE_IMAGE + b', "parameters": null}', None, 400, "'parameters' must be a JSON object"),
    (ONE_IMAGE + b', "parameters": {"timeout_ms": null}}', None, 422, "timeout_ms must be a number, got null"),
    (ONE_IMAGE + b', "parameters": {"beam_size": "3"}}', None, 422, "beam_size must be a number, got \"3\""),
    (ONE_IMAGE + b', "id": null}', None, 400, "'id' must be a string"),
    (ONE_IMAGE + b', "outputs": null}', None, 400, "'outputs' must be a list"),
    (ONE_IMAGE + b', "outputs": [{"name": "caption", "parameters": null}]}', None, 400, "output 'caption' parameters"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}xx',
     "json part", 400, "binary_data_size 9"),
    (b'{"inputs": []}', "999", 400, "not a length"),
    (b'{"inputs": []}', "-1", 400, "not a length"),
])
def test_malformed_requests_say_what_is_wrong(body, header, status, says):
    if header == "json part":  # the body's JSON, then two bytes of binary data
        header = str(len(body) - 2)
    with pytest.raises(RequestError) as caught:
        parse_infer_request(body, header)
    assert caught.value.status == status and says in caught.value.message


def test_binary_outputs_follow_the_json_header():
    parsed = parse_infer_request(json_request([b"a", b"b"], outputs=[
        {"name": "log_prob"}, {"name": "caption", "parameters": {"binary_data": True}}]), None)
    response = infer_response("m", parsed, ["a red circle", "a blue square"], [-1.5, -2.25])
    head = json.loads(response.data[:int(response.headers[HEADER_LENGTH])])
    assert head["outputs"][0] == {"name": "log_prob", "datatype": "FP32", "shape": [2], "data": [-1.5, -2.25]}
    size = head["outputs"][1]["parameters"]["binary_data_size"]
    blob = response.data[int(response.headers[HEADER_LENGTH]):]
    assert len(blob) == size and list(deserialize_bytes_tensor(blob)) == [b"a red circle", b"a blue square"]


# The routes in-process.

@pytest.fixture(scope="module")
def app(bundle_dir):
    return create_app(Config(bundle=bundle_dir, warmup=False))


@pytest.fixture(scope="module")
def heldout_images(trained_run):
    return [Path(item["image"]).read_bytes() for item in json.loads((trained_run / "heldout.json").read_text())[:4]]


def test_infer_answers_as_the_json_api_in_both_encodings(app, bundle_dir, heldout_images):
    client = app.test_client()
    expected = client.post("/api/v1/captions", data={"image": [(io.BytesIO(i), f"{n}.jpg")
                                                               for n, i in enumerate(heldout_images)]}).json["captions"]
    as_json = client.post(f"/v2/models/{bundle_dir.name}/infer", data=json_request(heldout_images, id="abc"))
    assert as_json.status_code == 200 and as_json.mimetype == "application/json"
    outputs = {o["name"]: o for o in as_json.json["outputs"]}
    assert as_json.json["id"] == "abc" and as_json.json["model_name"] == bundle_dir.name
    assert outputs["caption"]["data"] == [c["caption"] for c in expected]
    assert np.allclose(outputs["log_prob"]["data"], [c["log_prob"] for c in expected], atol=1e-5)
    body, headers = binary_request(heldout_images, parameters={"binary_data_output": True})
    as_binary = client.post(f"/v2/models/{bundle_dir.name}/versions/1/infer", data=body, headers=headers)
    assert as_binary.status_code == 200 and as_binary.headers["X-Request-ID"]
    head_length = int(as_binary.headers[HEADER_LENGTH])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(as_binary.data[:head_length])["outputs"]]
    captions = as_binary.data[head_length:head_length + sizes[0]]
    assert [c.decode() for c in deserialize_bytes_tensor(captions)] == [c["caption"] for c in expected]


@pytest.mark.parametrize("path, status", [("/v2/health/live", 200), ("/v2/health/ready", 200),
                                          ("/v2/models/{m}/ready", 200), ("/v2/models/{m}/versions/1/ready", 200),
                                          ("/v2/models/nope/ready", 404), ("/v2/models/{m}/versions/2", 404)])
def test_health_and_readiness(app, bundle_dir, path, status):
    assert app.test_client().get(path.format(m=bundle_dir.name)).status_code == status


def test_not_ready_while_warming_up(app, bundle_dir):
    readiness = app.extensions["readiness"]
    readiness.ready.clear()
    try:
        client = app.test_client()
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get(f"/v2/models/{bundle_dir.name}/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200
    finally:
        readiness.ready.set()


def test_errors_keep_the_json_apis_status_codes_in_the_protocols_shape(app, bundle_dir, heldout_images):
    client = app.test_client()
    infer = f"/v2/models/{bundle_dir.name}/infer"
    cases = [
        (client.post(infer, data=json_request([b"not an image"])), 415),
        (client.post(infer, data=json_request([heldout_images[0][:len(heldout_images[0]) // 2]])), 422),  # truncated
        (client.post(infer, data=json_request(heldout_images[:1] * 17)), 413),
        (client.post(infer, data=json_request(heldout_images[:1], parameters={"beam_size": 11})), 422),
        (client.post(infer, data=json_request(heldout_images[:1], parameters={"length_penalty": 9.5})), 422),
        (client.post(infer, data=json_request([])), 400),
        (client.post(infer, data=json_request(heldout_images[:1]), headers={"Content-Encoding": "gzip"}), 415),
        (client.post("/v2/models/nope/infer", data=json_request(heldout_images[:1])), 404),
        (client.get(infer), 405),
        (client.get("/v2/nowhere"), 404),
    ]
    for response, status in cases:
        assert response.status_code == status, response.json
        assert isinstance(response.json["error"], str) and response.json["error"], response.json


def test_a_full_queue_answers_503_with_retry_after(app, bundle_dir, heldout_images):
    batcher = app.extensions["captions"].models[bundle_dir.name].batcher
    batcher.queued_images += batcher.limits.max_queue_images
    try:
        response = app.test_client().post(f"/v2/models/{bundle_dir.name}/infer", data=json_request(heldout_images[:1]))
    finally:
        batcher.queued_images -= batcher.limits.max_queue_images
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert "busy" in response.json["error"]


# tritonclient against the live server (two workers).

@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def infer_with_tritonclient(client, model: str, images: list[bytes], binary: bool, **parameters):
    data = np.array(images if binary else [base64.b64encode(i) for i in images], dtype=np.object_)
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("caption", "log_prob")]
    result = client.infer(model, [tensor], outputs=outputs, parameters=parameters or None)
    # A BYTES output read from JSON comes back as str, from binary data as bytes.
    captions = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("caption")]
    return captions, result.as_numpy("log_prob")


def test_tritonclient_sees_a_live_ready_server_and_the_models_metadata(client, bundle_dir):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(bundle_dir.name)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(bundle_dir.name)
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["caption", "log_prob"]
    assert client.get_model_config(bundle_dir.name)["input"][0]["data_type"] == "TYPE_STRING"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("count", [1, 4])
def test_tritonclient_gets_the_captions_of_the_json_api(client, server, bundle_dir, heldout_images, binary, count):
    images = heldout_images[:count]
    for beam_size in (1, 3):
        expected = requests.post(server.url + "/api/v1/captions", data={"beam_size": str(beam_size)},
                                 files=[("image", (f"{n}.jpg", i, "image/jpeg")) for n, i in enumerate(images)]
                                 ).json()["captions"]
        captions, log_probs = infer_with_tritonclient(client, bundle_dir.name, images, binary, beam_size=beam_size)
        assert captions == [c["caption"] for c in expected]
        assert log_probs.dtype == np.float32 and np.allclose(log_probs, [c["log_prob"] for c in expected], atol=1e-5)


def test_tritonclient_reports_the_servers_errors(client, bundle_dir, heldout_images):
    with pytest.raises(InferenceServerException, match="no model named 'missing'"):
        infer_with_tritonclient(client, "missing", heldout_images[:1], True)
    with pytest.raises(InferenceServerException, match="not an image"):
        infer_with_tritonclient(client, bundle_dir.name, [b"hello"], True)
    with pytest.raises(InferenceServerException, match="max_length must be between"):
        infer_with_tritonclient(client, bundle_dir.name, heldout_images[:1], True, max_length=0)


def test_protocol_requests_are_counted_under_their_route(server, bundle_dir, heldout_images):
    body, headers = binary_request(heldout_images[:1])
    response = requests.post(f"{server.url}/v2/models/{bundle_dir.name}/infer", data=body, headers=headers)
    assert response.status_code == 200 and response.headers["X-Request-ID"]
    metrics = requests.get(server.url + "/metrics").text
    assert 'caption_http_requests_total{method="POST",route="/v2/models/<name>/infer",status="200"}' in metrics
