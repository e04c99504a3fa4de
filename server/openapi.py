"""The OpenAPI 3 description of the JSON API, built from the live configuration so limits
(beam width, caption length, upload size) are the ones the server enforces."""
from __future__ import annotations

import re

from .answers import is_protocol_path
from .api_keys import route_is_open
from .captioning import MAX_LENGTH_PENALTY
from .inference_protocol import HEADER_LENGTH, OPTIONS, OUTPUTS


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def attention_option(models: list[str], attending: list[str]) -> dict:
    """The `attention` switch as the served models take it: false only, when none of them attends."""
    meaning = ("also return, for each word, the weights of the image grid the decoder looked at (models with an "
               "attention decoder; 422 otherwise)")
    if not attending:
        return {"type": "boolean", "enum": [False], "default": False,
                "description": meaning + "; no served model has one, so only false"}
    if set(attending) != set(models):
        meaning += f"; served with one: {', '.join(attending)}"
    return {"type": "boolean", "default": False, "description": meaning}


def openapi_document(config, max_length: int, models: list[str], attending: list[str]) -> dict:
    """OpenAPI 3.0 document for this server; `models` are the served model names, default first,
    `attending` those whose decoder can answer attention weights. With API keys configured, the
    routes that need one say so (a bearer scheme, and their 401)."""
    document = _document(config, max_length, models, attending)
    return with_api_keys(document) if config.api_key_set else document


def with_api_keys(document: dict) -> dict:
    """`document` with the bearer scheme on every operation that needs a key (server/api_keys.py)."""
    document["components"]["securitySchemes"] = {"apiKey": {
        "type": "http", "scheme": "bearer", "description": "an API key of CAPTION_API_KEYS or CAPTION_API_KEYS_FILE"}}
    for path, operations in document["paths"].items():
        rule = re.sub(r"\{(\w+)\}", r"<\1>", path)
        for method, operation in operations.items():
            if not route_is_open(method.upper(), rule):
                operation["security"] = [{"apiKey": []}]
                error = _protocol_error if is_protocol_path(path) else _error
                operation["responses"]["401"] = error("No API key, or not one of the server's")
    return document


def _document(config, max_length: int, models: list[str], attending: list[str]) -> dict:
    image_formats = "JPEG, PNG, WebP, BMP, TIFF or GIF (first frame)"
    options = {
        "beam_size": {"type": "integer", "minimum": 1, "maximum": config.max_beam_size,
                      "default": config.default_beam_size, "description": "1 = greedy decoding"},
        "max_length": {"type": "integer", "minimum": 1, "maximum": max_length, "default": max_length,
                       "description": "longest caption in words"},
        "length_penalty": {"type": "number", "minimum": 0, "maximum": MAX_LENGTH_PENALTY,
                           "default": config.length_penalty,
                           "description": "beam hypotheses are ranked by log_prob / length ** length_penalty"},
        "attention": attention_option(models, attending),
        "model": {"type": "string", "enum": models, "default": models[0],
                  "description": "which served model captions (GET /api/v1/models lists them)"},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": int(config.request_timeout_s * 1000),
                       "default": int(config.request_timeout_s * 1000),
                       "description": "deadline for the whole request; work still queued at the deadline is "
                                      "dropped and answered 503"},
    }
    number = {"type": "number"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Image caption server", "version": "1.0.0",
                 "description": "Captions images with an InceptionV3 + LSTM model on onnxruntime."},
        "paths": {
            "/api/v1/captions": {"post": {
                "summary": "Caption one or several images",
                "operationId": "createCaptions",
                "parameters": [{"name": name, "in": "query", "required": False, "schema": schema}
                               for name, schema in options.items()],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "required": ["image"],
                        "properties": {
                            "image": {"type": "array", "items": {"type": "string", "format": "binary", "minLength": 1},
                                      "minItems": 1, "maxItems": config.max_images,
                                      "description": f"one or several images: {image_formats}"},
                            **options},
                    }},
                    "image/*": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
                }},
                "responses": {
                    "200": {"description": "One caption per image, in upload order",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Captions"}}}},
                    "400": _error("No image, or an empty one"),
                    "413": _error(f"Request over {config.max_upload_mb:g} MB, an image over "
                                  f"{config.max_pixels:,} pixels, images over {config.max_request_pixels:,} "
                                  f"pixels together, or over {config.max_images} images"),
                    "415": _error("Not an image in a supported format, or an unsupported content type"),
                    "414": _error("Request line (URL and query) over gunicorn's limit of 4094 bytes"),
                    "422": _error("Corrupt image, an invalid parameter or an unknown model"),
                    "431": _error("Request headers over gunicorn's limits"),
                    "503": {**_error("The server is overloaded (its queue is full), or the request passed its "
                                     "deadline before reaching the model"),
                            "headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                                        "schema": {"type": "integer", "minimum": 1}}}},
                },
            }},
            "/api/v1/model": {"get": {
                "summary": "The loaded model, and the path its encoder runs on (`execution_path`)", "operationId": "getModel",
                "responses": {"200": {"description": "Model summary from the bundle manifest, and the path its "
                                                     "encoder runs on",
                                      "content": {"application/json": {"schema": {"type": "object", "properties": {
                                          "execution_path": {"$ref": "#/components/schemas/ExecutionPath"}}}}}}}}},
            "/api/v1/models": {"get": {
                "summary": "Every served model", "operationId": "listModels",
                "responses": {"200": {"description": "The default model's name and a summary of each model",
                                      "content": {"application/json": {"schema": {
                                          "type": "object", "required": ["default", "models"], "properties": {
                                              "default": {"type": "string"},
                                              "models": {"type": "array", "items": {"type": "object"}}}}}}}}}},
            "/healthz": {"get": {
                "summary": "Liveness", "operationId": "getHealth",
                "responses": {"200": {"description": "The process is alive",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/readyz": {"get": {
                "summary": "Readiness", "operationId": "getReadiness",
                "responses": {
                    "200": {"description": "Model loaded and warmed up",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                    "503": {"description": "Not taking traffic: starting, draining or saturated (queue full)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of every worker", "operationId": "getMetrics",
                "responses": {"200": {"description": "Prometheus text exposition format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            **protocol_paths(config, models),
            "/openapi.json": {"get": {
                "summary": "This document", "operationId": "getOpenApi",
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": {
            "Captions": {"type": "object", "required": ["captions", "model", "timings_ms"], "properties": {
                "captions": {"type": "array", "items": {
                    "type": "object", "required": ["caption", "tokens", "log_prob"], "properties": {
                        "caption": {"type": "string"},
                        "tokens": {"type": "array", "items": {"type": "string"}},
                        "log_prob": {**number, "description": "total log-probability of the caption"},
                        "attention": {"type": "object", "required": ["grid", "weights"],
                                      "description": "with attention=true: for each of `tokens`, its weights "
                                                     "over the grid (rows x columns, row-major, summing to 1)",
                                      "properties": {
                                          "grid": {"type": "array", "items": {"type": "integer"},
                                                   "minItems": 2, "maxItems": 2},
                                          "weights": {"type": "array", "items": {"type": "array",
                                                                                 "items": number}}}}}}},
                "model": {"type": "object", "required": ["name", "created", "providers"], "properties": {
                    "name": {"type": "string"}, "created": {"type": "string", "nullable": True},
                    "providers": {"type": "array", "items": {"type": "string"}}}},
                "timings_ms": {"type": "object", "required": ["preprocess", "encode", "decode", "total"],
                               "description": "queue: time waiting for the model (micro-batching)",
                               "properties": {k: number for k in ("preprocess", "queue", "encode", "decode", "total")}},
            }},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
            "ExecutionPath": {"type": "object", "required": ["path", "reason", "encoder_ms", "dropped"],
                              "description": "where the encoder runs: chosen at start-up as the fastest measured "
                                             "candidate (CAPTION_PROVIDERS=auto), or as CAPTION_PROVIDERS says",
                              "properties": {
                                  "path": {"type": "string"}, "reason": {"type": "string"},
                                  "encoder_ms": {"type": "object", "additionalProperties": number,
                                                 "description": "each candidate's encoder time for one image"},
                                  "dropped": {"type": "object", "additionalProperties": {"type": "string"},
                                              "description": "the paths not considered, and why"}}},
            **protocol_schemas(config, {k: v for k, v in options.items() if k != "model"}, bool(attending)),
        }},
    }


def _protocol_error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceError"}}}}


def _json(schema: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def protocol_paths(config, models: list[str]) -> dict:
    """The Open Inference Protocol's routes (server/inference_protocol.py)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": models}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}
    unknown = _protocol_error("No such model or version")
    empty = {"description": "Yes (no body)"}
    not_ready = {"description": "Not ready: starting, draining or saturated (no body)"}
    # The binary tensor data extension (JSON, then raw bytes, split by a header) is described in words only:
    # no JSON Schema can say where its JSON ends, so a document listing it would have fuzzers send bodies
    # that no server could read.
    infer = {"post": {
        "summary": "Caption images (Open Inference Protocol)",
        "description": f"Input `image`: BYTES, one encoded image file per element (base64 text in JSON). "
                       f"Parameters: {', '.join(OPTIONS)}, attention. Outputs: {', '.join(OUTPUTS)} (and "
                       f"attention). Also takes the binary tensor data extension: the JSON request, then the "
                       f"binary data, with the header {HEADER_LENGTH} giving the JSON part's length "
                       f"(any Content-Type).",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}},
        "responses": {
            "200": {"description": "One caption and log-probability per image, in input order",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "400": _protocol_error("Not an inference request this model takes, or no image"),
            "404": unknown,
            "413": _protocol_error(f"Request over {config.max_upload_mb:g} MB, an image over the pixel limits, "
                                   f"or over {config.max_images} images"),
            "414": _protocol_error("Request line over gunicorn's limit"),
            "415": _protocol_error("An image in no supported format, or a compressed body"),
            "422": _protocol_error("Corrupt image, or an invalid parameter"),
            "431": _protocol_error("Request headers over gunicorn's limits"),
            "503": {**_protocol_error("Overloaded, or past the request's deadline"),
                    "headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                                "schema": {"type": "integer", "minimum": 1}}}},
        }}}
    metadata = {"get": {"summary": "Model metadata, with the path its encoder runs on (`parameters`)", "responses": {
        "200": _json("ModelMetadata", "The model's input and outputs"), "404": unknown}}}
    ready = {"get": {"summary": "Model readiness", "responses": {"200": empty, "404": unknown, "503": not_ready}}}
    config_route = {"get": {"summary": "Model configuration (Triton's extension, read by perf_analyzer)",
                            "responses": {"200": _json("ModelConfig", "Triton's model configuration"),
                                          "404": unknown}}}

    def with_parameters(route: dict, parameters: list) -> dict:
        return {method: {**operation, "parameters": parameters} for method, operation in route.items()}

    paths = {
        "/v2": {"get": {"summary": "Server metadata (Open Inference Protocol)",
                        "responses": {"200": _json("ServerMetadata", "Name, version and extensions")}}},
        "/v2/health/live": {"get": {"summary": "Server liveness", "responses": {"200": empty}}},
        "/v2/health/ready": {"get": {"summary": "Server readiness", "responses": {"200": empty, "503": not_ready}}},
    }
    for prefix, parameters in (("/v2/models/{name}", [name]), ("/v2/models/{name}/versions/{version}", [name, version])):
        paths[prefix] = with_parameters(metadata, parameters)
        paths[prefix + "/ready"] = with_parameters(ready, parameters)
        paths[prefix + "/config"] = with_parameters(config_route, parameters)
        paths[prefix + "/infer"] = with_parameters(infer, parameters)
    return paths


def protocol_schemas(config, options: dict, attending: bool) -> dict:
    """The Open Inference Protocol's JSON objects, for this server's one input and its outputs;
    `options`: the decoding options of /api/v1/captions, `attending`: whether any served model attends."""
    outputs = [*OUTPUTS, *(["attention"] if attending else [])]
    tensor_metadata = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}}
    output_tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string", "enum": [*OUTPUTS, "attention"]}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
        "data": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "number"}]}}}}
    # A shape cannot be tied to its data's length in JSON Schema; both are held to 1..max_images so
    # that a generated request often agrees with itself (the handler answers 400 where they differ,
    # 413 where the product passes max_images).
    images = {"type": "integer", "minimum": 1, "maximum": config.max_images}
    return {
        "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "additionalProperties": False, "properties": {
                **options,
                "binary_data_output": {"type": "boolean", "default": False}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape", "data"], "properties": {
                    "name": {"type": "string", "enum": ["image"]},
                    "datatype": {"type": "string", "enum": ["BYTES"]},
                    "shape": {"type": "array", "minItems": 1, "maxItems": 2, "items": images,
                              "description": "[n] or [n, m]: as many images as the product"},
                    "data": {"type": "array", "minItems": 1, "maxItems": config.max_images,
                             "items": {"type": "string", "format": "byte", "minLength": 4},
                             "description": "each image file, base64-encoded"}}}},
            "outputs": {"type": "array", "uniqueItems": True, "items": {
                "type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string", "enum": outputs},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}},
                        "description": "the outputs to answer, each once (all when absent); asking for "
                                       "`attention` asks for the parameter attention unless it says false"},
        }},
        "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": output_tensor}}},
        "InferenceError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                          "properties": {"name": {"type": "string"},
                                         "versions": {"type": "array", "items": {"type": "string"}},
                                         "platform": {"type": "string"},
                                         "inputs": {"type": "array", "items": tensor_metadata},
                                         "outputs": {"type": "array", "items": tensor_metadata},
                                         "parameters": {"type": "object", "description": "the path the encoder "
                                                        "runs on, and why", "properties": {
                                             "execution_path": {"type": "string"},
                                             "execution_path_reason": {"type": "string"}}}}},
        "ModelConfig": {"type": "object", "required": ["name", "max_batch_size", "input", "output"]},
    }
