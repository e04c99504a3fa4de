"""The gRPC servicer: the same models, queue, limits, deadlines, metrics, traces and request ids as
the REST protocol routes (server/inference_protocol.py), whose parsing and answers it shares.

Images travel as one BYTES input, `image`: in `raw_input_contents` (4-byte length before each
element, as tritonclient sends them) or in `contents.bytes_contents`. Outputs come back in
`raw_output_contents`, as Triton answers. A gRPC deadline becomes the request's deadline (never
longer than CAPTION_REQUEST_TIMEOUT_S). A refusal keeps REST's message, with the gRPC status
that matches REST's HTTP status (STATUS_CODES).
"""
from __future__ import annotations

import logging
import time
from importlib import metadata

import grpc
import numpy as np
from google.protobuf import json_format

from .. import observability as metrics
from .. import tracing
from ..api_keys import OPEN_GRPC_METHODS, is_valid, presented_key
from ..errors import RequestError
from ..inference_protocol import (ATTENTION, EXTENSIONS, INPUT, OUTPUTS, SERVER_NAME, VERSION, InferRequest,
                                  attention_positions, bad_request, check_image_count, check_image_tensor,
                                  check_output_name, decoding_options, default_outputs, deserialize_bytes,
                                  model_config, model_metadata, run_inference, serialize_bytes, served_model)
from . import grpc_service_pb2 as pb
from . import grpc_service_pb2_grpc as pb_grpc
from . import model_config_pb2

log = logging.getLogger(__name__)
SERVICE = "/inference.GRPCInferenceService/"
TRITON_RESERVED = "triton_"
# REST's statuses as gRPC's (the HTTP mapping of google.rpc.Code, read backwards).
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.INVALID_ARGUMENT,
                415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
                499: grpc.StatusCode.CANCELLED, 503: grpc.StatusCode.UNAVAILABLE}
# The HTTP status each gRPC status is counted under in /metrics, beside the REST routes': a deadline
# that passed is REST's 503, as the shed it is; anything else is the server's fault (500).
HTTP_STATUS = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 503}


def grpc_status(error: RequestError) -> grpc.StatusCode:
    if error.code == "deadline_exceeded":
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


def parameter_value(parameter: pb.InferParameter):
    """An InferParameter as the Python value REST's JSON would carry."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parse_infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as REST's InferRequest (every output raw); a RequestError like REST's otherwise."""
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT]:
        raise bad_request(f"this model takes one input, '{INPUT}' (BYTES), got {str(names)[:80]}")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    check_image_tensor(tensor.datatype, shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise bad_request(f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input")
        images = deserialize_bytes(request.raw_input_contents[0])
    else:
        images = list(tensor.contents.bytes_contents)
    check_image_count(shape, images)
    # Triton reserves the triton_ prefix for its clients' own switches (perf_analyzer sends
    # triton_enable_empty_final_response, for decoupled models): not decoding options, so not refused.
    options = decoding_options({name: parameter_value(p) for name, p in request.parameters.items()
                                if not name.startswith(TRITON_RESERVED)})
    attention = bool(request.parameters[ATTENTION].bool_param) if ATTENTION in request.parameters else None
    chosen: list[str] = []
    for output in request.outputs:
        check_output_name(output.name, attention, chosen)
        chosen.append(output.name)
    outputs = chosen or default_outputs(attention)
    if ATTENTION in outputs and ATTENTION not in options:
        options.add(ATTENTION, "true")
    return InferRequest(request.id or None, images, options, [(name, True) for name in outputs])


def infer_response(model_name: str, parsed: InferRequest, captions: list[str], log_probs: list[float],
                   attention: np.ndarray | None) -> pb.ModelInferResponse:
    """The outputs asked for, in raw_output_contents (BYTES length-prefixed, FP32 little-endian)."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=VERSION, id=parsed.id or "")
    for name, _ in parsed.outputs:
        if name == "caption":
            shape, blob = [len(captions)], serialize_bytes([c.encode() for c in captions])
        elif name == "log_prob":
            shape, blob = [len(captions)], np.asarray(log_probs, "<f4").tobytes()
        else:
            shape, blob = list(attention.shape), attention.astype("<f4").tobytes()
        response.outputs.add(name=name, datatype=OUTPUTS.get(name, "FP32"), shape=shape)
        response.raw_output_contents.append(blob)
    return response


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over one worker's models (its ModelRegistry) and readiness."""

    def __init__(self, registry, readiness):
        self.registry, self.readiness = registry, readiness

    def ServerLive(self, request, context):
        return self._answer("ServerLive", context, lambda: pb.ServerLiveResponse(live=True))

    def ServerReady(self, request, context):
        return self._answer("ServerReady", context,
                            lambda: pb.ServerReadyResponse(ready=self.readiness.status() == "ready"))

    def ModelReady(self, request, context):
        def ready():
            served_model(self.registry, request.name, request.version or None)
            return pb.ModelReadyResponse(ready=self.readiness.ready.is_set())
        return self._answer("ModelReady", context, ready)

    def ServerMetadata(self, request, context):
        return self._answer("ServerMetadata", context, lambda: pb.ServerMetadataResponse(
            name=SERVER_NAME, version=metadata.version(SERVER_NAME), extensions=EXTENSIONS))

    def ModelMetadata(self, request, context):
        def model():
            served = served_model(self.registry, request.name, request.version or None)
            described = model_metadata(request.name, attention_positions(served))
            return pb.ModelMetadataResponse(
                name=described["name"], versions=described["versions"], platform=described["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in described["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in described["outputs"]])
        return self._answer("ModelMetadata", context, model)

    def ModelConfig(self, request, context):
        def config():
            served = served_model(self.registry, request.name, request.version or None)
            described = model_config(request.name, self.registry.config.max_images, attention_positions(served))
            return pb.ModelConfigResponse(config=json_format.ParseDict(described, model_config_pb2.ModelConfig()))
        return self._answer("ModelConfig", context, config)

    def ModelInfer(self, request, context):
        def infer():
            model = served_model(self.registry, request.model_name, request.model_version or None)
            self.registry.refuse_when_full()
            with tracing.stage("read body"):
                parsed = parse_infer_request(request)
            return infer_response(request.model_name, parsed,
                                  *run_inference(model, parsed, started, context.is_active, context.time_remaining()))
        started = time.perf_counter()
        return self._answer("ModelInfer", context, infer, started, request.ByteSize())

    def _answer(self, method: str, context, make, started: float | None = None, bytes_in: int = 0):
        """Run one RPC as the REST routes run a request: its id (metadata x-request-id, sent back), the
        key check, a trace span, the in-flight gauge, and one counted, timed access line."""
        started = started or time.perf_counter()
        route = SERVICE + method
        headers = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        request_id = metrics.request_id_of(headers.get("x-request-id", ""))
        context.send_initial_metadata((("x-request-id", request_id),))
        trace = tracing.request_started("POST", route, headers, request_id)
        metrics.IN_FLIGHT.inc()
        status, error_code, message = grpc.StatusCode.OK, None, ""
        try:
            keys = self.registry.config.api_key_set
            if keys and route not in OPEN_GRPC_METHODS and not is_valid(presented_key(headers.get("authorization")),
                                                                        keys):
                raise RequestError(401, "unauthorized", "this method needs an API key: send the metadata "
                                                        "'authorization: Bearer <key>'")
            return make()
        except RequestError as exc:
            status, error_code, message = grpc_status(exc), exc.code, exc.message
        except Exception:  # noqa: BLE001  (answered INTERNAL with a fixed message; the traceback goes to the log)
            log.exception("unhandled error in gRPC %s", method)
            status, error_code, message = grpc.StatusCode.INTERNAL, "internal_error", \
                "the server failed to caption this request"
        finally:
            metrics.IN_FLIGHT.dec()
            http_status = HTTP_STATUS.get(status, 500)
            metrics.answered("GRPC", route, http_status, started, request_id, error_code, bytes_in)
            tracing.request_finished(trace, http_status)
        context.abort(status, message)

