"""The OpenAPI 3 description of the JSON API, built from the live configuration so limits
(beam width, caption length, upload size) are the ones the server enforces."""
from __future__ import annotations


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(config, max_length: int, models: list[str]) -> dict:
    """OpenAPI 3.0 document for this server; `models` are the served model names, default first."""
    image_formats = "JPEG, PNG, WebP, BMP, TIFF or GIF (first frame)"
    options = {
        "beam_size": {"type": "integer", "minimum": 1, "maximum": config.max_beam_size,
                      "default": config.default_beam_size, "description": "1 = greedy decoding"},
        "max_length": {"type": "integer", "minimum": 1, "maximum": max_length, "default": max_length,
                       "description": "longest caption in words"},
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
                "summary": "The loaded model", "operationId": "getModel",
                "responses": {"200": {"description": "Model summary from the bundle manifest",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
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
                        "log_prob": {**number, "description": "total log-probability of the caption"}}}},
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
        }},
    }
