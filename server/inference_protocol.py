"""The Open Inference Protocol (KServe v2) over REST, beside the JSON API: what Triton, KServe,
MLServer and their clients (tritonclient, perf_analyzer) speak.

Every served model takes one input, `image` (BYTES, shape [n] or [n, m]: one encoded image file
per element), and answers `caption` (BYTES) and `log_prob` (FP32), one per image; a model with an
attention decoder also answers `attention` (FP32 [n, words, grid positions], zero past each
caption's end) when the parameter `attention` is true. Images travel
as raw bytes with the binary tensor data extension (`Inference-Header-Content-Length`, which
tritonclient uses by default), or as base64 text in plain JSON, as KServe's image examples send
them. Requests go through the same queue, limits, deadlines and metrics as /api/v1/captions;
errors keep that route's status codes in the protocol's shape, {"error": "..."}.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from importlib import metadata

import numpy as np
from flask import Blueprint, Response, current_app, g, request
from werkzeug.datastructures import MultiDict

from . import tracing
from .client_probe import client_connected
from .errors import RequestError

v2 = Blueprint("inference_protocol", __name__)

SERVER_NAME = "caption-server"  # the package's name in pyproject.toml, whose version /v2 reports
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "image"
OUTPUTS = {"caption": "BYTES", "log_prob": "FP32"}
# Request parameters: the decoding options of /api/v1/captions, and the protocol's own switch.
OPTIONS = ("beam_size", "max_length", "length_penalty", "timeout_ms")
BINARY_OUTPUT = "binary_data_output"
ATTENTION = "attention"  # the parameter that asks for the output of the same name
VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
LENGTH_PREFIX = struct.Struct("<I")


def bad_request(message: str) -> RequestError:
    return RequestError(400, "invalid_inference_request", message)


@dataclass
class InferRequest:
    """What an infer request asks for: its id, its images, its decoding options (as text, the
    form /api/v1/captions validates) and the outputs to return with whether each is binary."""

    id: str | None
    images: list[bytes]
    options: MultiDict
    outputs: list[tuple[str, bool]]


def serialize_bytes(elements: list[bytes]) -> bytes:
    """A BYTES tensor in the binary extension: each element after its 4-byte little-endian length."""
    return b"".join(LENGTH_PREFIX.pack(len(e)) + e for e in elements)


def deserialize_bytes(blob: bytes) -> list[bytes]:
    """The elements of a binary BYTES tensor; a length past the end is a 400."""
    elements, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise bad_request(f"input '{INPUT}': its binary data ends inside an element's 4-byte length")
        (size,) = LENGTH_PREFIX.unpack_from(blob, at)
        if at + 4 + size > len(blob):
            raise bad_request(f"input '{INPUT}': element {len(elements) + 1} says {size} bytes, "
                              f"{len(blob) - at - 4} are left")
        elements.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    return elements


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of a request body as a dict, and the binary data after it."""
    if header_length is None:
        head, binary = body, b""
    else:
        text = header_length.strip()
        if not text.isascii() or not text.isdigit() or int(text) > len(body):
            raise bad_request(f"{HEADER_LENGTH}: {header_length[:40]!r} is not a length within the "
                              f"{len(body)}-byte body")
        head, binary = body[:int(text)], body[int(text):]
    try:
        document = json.loads(head)
    except (ValueError, RecursionError):
        raise bad_request("the body is not a JSON inference request (with binary data, "
                          f"{HEADER_LENGTH} gives the JSON part's length)") from None
    if not isinstance(document, dict):
        raise bad_request("the inference request must be a JSON object with 'inputs'")
    return document, binary


def _object(container: dict, key: str, what: str) -> dict:
    """container[key], a JSON object; {} when absent (null is not absent: the protocol's objects are never null)."""
    value = container.get(key, {})
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object")
    return value


def check_image_tensor(datatype, shape) -> None:
    """A 400 unless input `image` is BYTES of shape [n] or [n, m] (REST's JSON values, or gRPC's fields)."""
    if datatype != "BYTES":
        raise bad_request(f"input '{INPUT}' must have datatype BYTES (one encoded image file per element), "
                          f"got {str(datatype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) not in (1, 2) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad_request(f"input '{INPUT}' must have shape [n] or [n, m] (n or n x m images), got {str(shape)[:40]}")


def check_image_count(shape: list[int], images: list[bytes]) -> None:
    if len(images) != math.prod(shape):
        raise bad_request(f"input '{INPUT}' has shape {shape} but {len(images)} elements")


def _images(tensor: dict, binary: bytes, offset: int) -> tuple[list[bytes], int]:
    """The image files of input `image`, and where the next binary data starts."""
    shape = tensor.get("shape")
    check_image_tensor(tensor.get("datatype"), shape)
    size = _object(tensor, "parameters", f"input '{INPUT}' parameters").get("binary_data_size")
    if size is not None:
        if type(size) is not int or not 0 <= size <= len(binary) - offset:
            raise bad_request(f"input '{INPUT}': binary_data_size {str(size)[:20]} is not within the "
                              f"{len(binary) - offset} bytes of binary data left")
        images = deserialize_bytes(binary[offset:offset + size])
        offset += size
    else:
        data = tensor.get("data")
        if isinstance(data, list) and all(isinstance(row, list) for row in data):
            data = [item for row in data for item in row]
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise bad_request(f"input '{INPUT}' needs 'data' (base64 text per image) or binary data "
                              "(parameters.binary_data_size)")
        images = []
        for index, item in enumerate(data):
            try:
                images.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise bad_request(f"input '{INPUT}': element {index + 1} is not base64 text (in JSON, an image "
                                  "file is sent base64-encoded)") from None
    check_image_count(shape, images)
    return images, offset


def decoding_options(parameters: dict) -> MultiDict:
    """A request's parameters as the text options /api/v1/captions validates (REST and gRPC alike)."""
    unknown = sorted(set(parameters) - set(OPTIONS) - {BINARY_OUTPUT, ATTENTION})
    if unknown:
        raise RequestError(422, "invalid_parameter", f"unknown parameter {str(unknown[0])[:40]!r}; this model "
                                                     f"takes {', '.join(OPTIONS)}, {ATTENTION} and {BINARY_OUTPUT}")
    options = MultiDict()
    if ATTENTION in parameters:
        if not isinstance(parameters[ATTENTION], bool):
            raise RequestError(422, "invalid_parameter", f"{ATTENTION} must be true or false")
        options.add(ATTENTION, str(parameters[ATTENTION]).lower())
    for name in (n for n in OPTIONS if n in parameters):
        value = parameters[name]
        # Numbers become the text /api/v1/captions validates; a float for an integer option is refused there.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(422, "invalid_parameter", f"{name} must be a number, got {json.dumps(value)[:40]}")
        options.add(name, repr(value))
    return options


def check_output_name(name, attention: bool | None, chosen: list[str]) -> None:
    """A 400 unless `name` is an output not yet asked for that the request's `attention` parameter allows."""
    nameable = [*OUTPUTS, ATTENTION]
    if name == ATTENTION and attention is False:
        raise bad_request(f"output '{ATTENTION}' was asked for with the parameter {ATTENTION}: false")
    if name not in nameable or name in chosen:
        raise bad_request(f"output {str(name)[:40]!r} is unknown or repeated; the outputs are {', '.join(nameable)}")


def default_outputs(attention: bool | None) -> list[str]:
    """The outputs answered when a request names none: all, as Triton answers."""
    return [*OUTPUTS, *([ATTENTION] if attention else [])]


def _requested_outputs(document: dict, binary_default: bool, attention: bool | None) -> list[tuple[str, bool]]:
    """The outputs to answer, each with whether it is binary. `attention`: the parameter (None when
    absent); naming the output asks for it unless the parameter says false, as Triton's outputs do."""
    wanted = document.get("outputs", [])
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise bad_request("'outputs' must be a list of objects with a 'name'")
    chosen = []
    for output in wanted:
        name = output.get("name")
        check_output_name(name, attention, [n for n, _ in chosen])
        binary = _object(output, "parameters", f"output '{name}' parameters").get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise bad_request(f"output '{name}': binary_data must be true or false")
        chosen.append((name, binary))
    return chosen or [(name, binary_default) for name in default_outputs(attention)]


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body (JSON, or JSON then binary data) as an InferRequest; a 400 or 422
    that says what is wrong otherwise."""
    document, binary = split_body(body, header_length)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise bad_request(f"'inputs' must be a list with one input, '{INPUT}' (BYTES)")
    names = [t.get("name") for t in inputs]
    if names != [INPUT]:
        raise bad_request(f"this model takes one input, '{INPUT}' (BYTES), got {str(names)[:80]}")
    images, used = _images(inputs[0], binary, 0)
    if used != len(binary):
        raise bad_request(f"{len(binary) - used} bytes of binary data belong to no input")
    request_id = document.get("id")
    if "id" in document and not isinstance(request_id, str):
        raise bad_request("'id' must be a string")
    parameters = _object(document, "parameters", "'parameters'")
    binary_default = parameters.get(BINARY_OUTPUT, False)
    if not isinstance(binary_default, bool):
        raise bad_request(f"{BINARY_OUTPUT} must be true or false")
    options = decoding_options(parameters)
    outputs = _requested_outputs(document, binary_default, parameters.get(ATTENTION))
    if ATTENTION not in options and any(name == ATTENTION for name, _ in outputs):
        options.add(ATTENTION, "true")
    return InferRequest(request_id, images, options, outputs)


def run_inference(model, parsed: InferRequest, started: float, connected, deadline_s: float | None = None):
    """(captions, log-probs, attention tensor or None) of a parsed infer request on a served model,
    through its queue and limits, as REST and gRPC both answer it; `deadline_s`: the caller's own
    deadline where it is nearer than the request's timeout."""
    options = model.options(parsed.options)
    if deadline_s is not None:
        options.timeout_s = max(0.0, min(options.timeout_s, deadline_s))
    captions = model.caption_uploads(parsed.images, options, started, connected)["captions"]
    attention = (attention_tensor([c["attention"]["weights"] for c in captions], attention_positions(model))
                 if parsed.options.get(ATTENTION) == "true" else None)
    return [c["caption"] for c in captions], [c["log_prob"] for c in captions], attention


def attention_tensor(weights: list, positions: int) -> np.ndarray:
    """Each caption's attention rows [words, positions] as one [n, longest, positions] tensor, zeros past
    each caption's end."""
    out = np.zeros((len(weights), max(map(len, weights)), positions), np.float32)
    for i, rows in enumerate(weights):
        out[i, :len(rows)] = np.asarray(rows, np.float32).reshape(len(rows), positions)
    return out


def infer_response(model_name: str, request: InferRequest, captions: list[str], log_probs: list[float],
                   attention: np.ndarray | None = None) -> Response:
    """The inference response: JSON, or JSON then the binary outputs with their header.
    `attention`: the attention_tensor of the captions, when the request asked for it."""
    values = {"caption": [c.encode() for c in captions], "log_prob": np.asarray(log_probs, np.float32)}
    if attention is not None:
        values[ATTENTION] = attention
    document = {"model_name": model_name, "model_version": VERSION, "outputs": []}
    if request.id is not None:
        document["id"] = request.id
    blobs = []
    for name, binary in request.outputs:
        shape = list(values[name].shape) if name == ATTENTION else [len(captions)]
        tensor = {"name": name, "datatype": OUTPUTS.get(name, "FP32"), "shape": shape}
        if binary:
            blob = serialize_bytes(values[name]) if name == "caption" else values[name].astype("<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = captions if name == "caption" else [float(v) for v in values[name].ravel()]
        document["outputs"].append(tensor)
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return Response(head, mimetype="application/json")
    return Response(head + b"".join(blobs), mimetype="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})


def _outputs(positions: int) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of every output; `positions`: the attention grid's size (0: none)."""
    return [(n, t, [-1]) for n, t in OUTPUTS.items()] + ([(ATTENTION, "FP32", [-1, -1, positions])] if positions else [])


def model_metadata(name: str, positions: int = 0, choice=None) -> dict:
    """The model metadata response: one BYTES input, its outputs, one version; with `choice`
    (server/path_choice.Choice), the path its encoder runs on as parameters."""
    metadata = {"name": name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": n, "datatype": t, "shape": s} for n, t, s in _outputs(positions)]}
    if choice is not None:
        metadata["parameters"] = {"execution_path": choice.path.name, "execution_path_reason": choice.reason}
    return metadata


def model_config(name: str, max_images: int, positions: int = 0) -> dict:
    """Triton's model configuration extension, which perf_analyzer reads before it profiles."""
    triton_type = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}
    return {"name": name, "platform": "onnxruntime_onnx", "backend": "", "max_batch_size": 0,
            "input": [{"name": INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
            "output": [{"name": n, "data_type": triton_type[t], "dims": s} for n, t, s in _outputs(positions)],
            "parameters": {"max_images_per_request": {"string_value": str(max_images)}}}


def attention_positions(model) -> int:
    """The attention grid's size of a served model (0: it has none)."""
    grid = model.engine.bundle.attention_grid
    return grid[0] * grid[1] if grid else 0


def _registry():
    return current_app.extensions["captions"]


def _served(name: str, version: str | None):
    return served_model(_registry(), name, version)


def served_model(registry, name: str, version: str | None):
    """The served model `name` (version "1" or none); a 404 in the protocol's words otherwise."""
    models = registry.models
    if name not in models:
        raise RequestError(404, "unknown_model", f"no model named {name[:60]!r}; the models are {', '.join(models)}")
    if version not in (None, VERSION):
        raise RequestError(404, "unknown_version", f"model {name!r} has one version, {VERSION!r}; "
                                                   f"got {version[:20]!r}")
    return models[name]


def _empty(status: int) -> Response:
    return Response(status=status)


@v2.get("/v2")
def server_metadata():
    return {"name": SERVER_NAME, "version": metadata.version(SERVER_NAME), "extensions": EXTENSIONS}


@v2.get("/v2/health/live")
def server_live():
    return _empty(200)


@v2.get("/v2/health/ready")
def server_ready():
    """As /readyz: 200 when this worker should get traffic, 503 while starting, draining or full."""
    return _empty(200 if current_app.extensions["readiness"].status() == "ready" else 503)


@v2.get("/v2/models/<name>")
@v2.get("/v2/models/<name>/versions/<version>")
def model(name: str, version: str | None = None):
    served = _served(name, version)
    return model_metadata(name, attention_positions(served), served.engine.choice)


@v2.get("/v2/models/<name>/config")
@v2.get("/v2/models/<name>/versions/<version>/config")
def config(name: str, version: str | None = None):
    return model_config(name, _registry().config.max_images, attention_positions(_served(name, version)))


@v2.get("/v2/models/<name>/ready")
@v2.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    """200 once the model's warm-up is done (it is loaded at start-up, or the worker does not start)."""
    _served(name, version)
    return _empty(200 if current_app.extensions["readiness"].ready.is_set() else 503)


@v2.post("/v2/models/<name>/infer")
@v2.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    from .api import read_raw_body

    model = _served(name, version)
    registry = _registry()
    registry.refuse_when_full()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise RequestError(415, "unsupported_content_encoding",
                           f"Content-Encoding {encoding[:20]!r} is not supported; send the body uncompressed")
    with tracing.stage("read body"):
        parsed = parse_infer_request(read_raw_body(registry.config.max_upload_bytes),
                                     request.headers.get(HEADER_LENGTH))
    return infer_response(name, parsed, *run_inference(model, parsed, g.started, client_connected(request.environ)))
