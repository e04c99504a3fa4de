"""The Open Inference Protocol over gRPC: stubs generated from Triton's .proto files, requests parsed
as REST parses them, and a live server that tritonclient.grpc and perf_analyzer -i grpc talk to,
with REST's captions, limits, deadlines, messages and metrics."""
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from harness.server_process import ROOT
from server.errors import RequestError
from server.grpc_protocol import grpc_service_pb2 as pb
from server.grpc_protocol.service import grpc_status, parse_infer_request
from server.inference_protocol import serialize_bytes

STUBS = ROOT / "server" / "grpc_protocol"


def test_the_committed_stubs_are_what_grpcio_tools_makes_of_the_protos(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{STUBS / 'protos'}", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", "grpc_service.proto", "model_config.proto"], check=True)
    for name in ("grpc_service_pb2.py", "grpc_service_pb2_grpc.py", "model_config_pb2.py"):
        assert (tmp_path / name).read_text() == (STUBS / name).read_text(), f"{name}: run make grpc-stubs"


def infer_request(images: list[bytes], shape=None, raw=True, **parameters) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=shape or [len(images)])
    if raw:
        request.raw_input_contents.append(serialize_bytes(images))
    else:
        tensor.contents.bytes_contents.extend(images)
    for name, value in parameters.items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[type(value)]
        setattr(request.parameters[name], field, value)
    return request


def test_images_come_raw_or_as_bytes_contents_with_options_as_rest_reads_them():
    for raw in (True, False):
        parsed = parse_infer_request(infer_request([b"one", b"two"], raw=raw, beam_size=3, length_penalty=0.5))
        assert parsed.images == [b"one", b"two"] and parsed.id == "r1"
        assert parsed.options.to_dict() == {"beam_size": "3", "length_penalty": "0.5"}
        assert parsed.outputs == [("caption", True), ("log_prob", True)]
    with_attention = parse_infer_request(infer_request([b"one"], attention=True))
    assert [name for name, _ in with_attention.outputs] == ["caption", "log_prob", "attention"]


@pytest.mark.parametrize("request_, status, message", [
    (infer_request([b"a", b"b"], shape=[3]), 400, "has shape [3] but 2 elements"),
    (infer_request([b"a"], beam_size="3"), 422, "beam_size must be a number"),
    (infer_request([b"a"], temperature=1.0), 422, "unknown parameter 'temperature'"),
    (pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="BYTES", shape=[1])]),
     400, "this model takes one input, 'image' (BYTES)"),
    (pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=[1])]),
     400, "must have datatype BYTES"),
])
def test_a_bad_request_is_refused_with_rest_s_status_and_message(request_, status, message):
    with pytest.raises(RequestError) as refused:
        parse_infer_request(request_)
    assert refused.value.status == status and message in refused.value.message
    assert grpc_status(refused.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_statuses_map_as_rest_s_do():
    assert grpc_status(RequestError(404, "unknown_model", "")) == grpc.StatusCode.NOT_FOUND
    assert grpc_status(RequestError(503, "overloaded", "")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_status(RequestError(503, "deadline_exceeded", "")) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_status(RequestError(401, "unauthorized", "")) == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def client(server):
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


@pytest.fixture(scope="module")
def photos(trained_run) -> list[bytes]:
    heldout = json.loads((trained_run / "heldout.json").read_text())
    return [Path(item["image"]).read_bytes() for item in heldout[:4]]


def images_input(images: list[bytes]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def test_tritonclient_grpc_sees_the_server_and_reads_metadata(client, bundle_dir):
    model = bundle_dir.name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    assert client.get_server_metadata().name == "caption-server"
    metadata = client.get_model_metadata(model)
    assert [(t.name, t.datatype) for t in metadata.inputs] == [("image", "BYTES")]
    assert [t.name for t in metadata.outputs] == ["caption", "log_prob"]
    assert client.get_model_config(model).config.input[0].name == "image"
    with pytest.raises(InferenceServerException, match="no model named 'nobody'"):
        client.get_model_metadata("nobody")


@pytest.mark.parametrize("count", [1, 4])
def test_captions_and_log_probs_are_the_json_api_s(client, server, bundle_dir, photos, count):
    images = photos[:count]
    result = client.infer(bundle_dir.name, [images_input(images)], request_id="grpc-test")
    assert result.get_response().id == "grpc-test"
    rest = requests.post(server.url + "/api/v1/captions", files=[("image", (f"{i}.png", image))
                                                                  for i, image in enumerate(images)]).json()
    assert [c.decode() for c in result.as_numpy("caption")] == [c["caption"] for c in rest["captions"]]
    assert np.allclose(result.as_numpy("log_prob"), [c["log_prob"] for c in rest["captions"]], atol=1e-5)


def test_bad_input_gets_invalid_argument_with_rest_s_message(client, server, bundle_dir):
    with pytest.raises(InferenceServerException) as refused:
        client.infer(bundle_dir.name, [images_input([b"not an image"])])
    rest = requests.post(server.url + f"/v2/models/{bundle_dir.name}/infer", json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]})
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message() == rest.json()["error"] and rest.status_code == 415


def test_a_deadline_shorter_than_the_work_answers_deadline_exceeded(client, bundle_dir, photos):
    with pytest.raises(InferenceServerException) as late:
        client.infer(bundle_dir.name, [images_input(photos * 4)], client_timeout=0.002)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def grpc_counts(server) -> dict[str, float]:
    text = requests.get(server.url + "/metrics").text
    pattern = r'caption_http_requests_total\{method="GRPC",route="/inference.GRPCInferenceService/ModelInfer",' \
              r'status="(\d+)"\} (\S+)'
    return {status: float(value) for status, value in re.findall(pattern, text)}


def test_calls_are_counted_beside_rest_s_and_perf_analyzer_profiles_them(server, bundle_dir, photos):
    from benchmarks.perf_analyzer import profile

    before = grpc_counts(server)
    rows = profile(f"127.0.0.1:{server.grpc_port}", bundle_dir.name, photos[:1], [1], window_ms=1000,
                   stability_percent=100, protocol="grpc")
    assert rows[0]["protocol"] == "grpc" and rows[0]["captions_per_s"] > 0
    assert grpc_counts(server).get("200", 0) > before.get("200", 0)


def test_a_draining_server_finishes_the_call_it_holds_and_then_stops(bundle_dir):
    """SIGTERM while a slow call (3 PNGs of 16 megapixels: about a second to decode) is in flight: the
    call is answered in full, and the server, gRPC port included, then stops."""
    import io
    import os
    import signal
    import threading
    import time

    from PIL import Image

    from harness.server_process import GunicornServer

    ramp = np.tile(np.linspace(0, 255, 4000, dtype=np.uint8), (4000, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(buffer, "PNG")  # 56 KB on the wire
    images = [buffer.getvalue()] * 3
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "1"})
    try:
        srv.wait_ready()
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        assert client.is_server_live()  # connected before the call
        answered, sent_term = {}, threading.Event()

        def call():
            try:
                result = client.infer(bundle_dir.name, [images_input(images)], client_timeout=30)
            except InferenceServerException as exc:
                answered.update(error=str(exc))
            else:
                answered.update(captions=len(result.as_numpy("caption")), after_term=sent_term.is_set())

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)  # the call is decoding its images
        os.kill(srv.process.pid, signal.SIGTERM)
        sent_term.set()
        caller.join(30)
        assert answered == {"captions": 3, "after_term": True}, answered
        assert srv.process.wait(30) == 0
        with pytest.raises(InferenceServerException):
            triton_grpc.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}").is_server_live(client_timeout=2)
    finally:
        srv.stop()
