"""Prometheus metrics, request ids and the per-request access log line.

Under gunicorn every worker writes its metrics to PROMETHEUS_MULTIPROC_DIR (set by
gunicorn.conf.py before any worker starts) and /metrics adds them up, so a scrape sees the
whole server whichever worker answers it. Outside gunicorn the process's own registry is used.
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

from . import tracing

access_log = logging.getLogger("caption.access")

# Accept a caller's id only if it is short and plain, so it cannot forge log lines or headers.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("caption_http_requests_total", "HTTP requests answered, by route, method and status.",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("caption_http_request_seconds", "Time to answer an HTTP request, by route.",
                            ["route"], buckets=LATENCY_BUCKETS)
STAGE_SECONDS = Histogram("caption_stage_seconds", "Time per captioning stage of a request (preprocess, queue, "
                          "encode, decode, total); a request that shared a batch is charged its share of the "
                          "batch's encode and decode time, by images.", ["stage"], buckets=LATENCY_BUCKETS)
QUEUE_IMAGES = Gauge("caption_queue_images", "Images waiting for the model (all workers).",
                     multiprocess_mode="livesum")
BATCH_IMAGES = Histogram("caption_batch_images", "Images per model run (micro-batch size).",
                         buckets=(1, 2, 4, 8, 16, 32, 64))
REQUESTS_SHED = Counter("caption_requests_shed_total", "Caption requests not run, by reason: queue_full, "
                        "deadline, client_gone.", ["reason"])
IN_FLIGHT = Gauge("caption_http_requests_in_flight", "HTTP requests being answered now.",
                  multiprocess_mode="livesum")
MODEL_INFO = Gauge("caption_model_info", "The model bundle each worker serves (value 1), and the path its encoder "
                   "runs on (server/path_choice.py).", ["model", "created", "providers", "path"],
                   multiprocess_mode="liveall")


def observe_stages(timings_ms: dict[str, float]) -> None:
    """Record a caption request's stage timings (milliseconds, as the API reports them)."""
    for stage, ms in timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1e3)


def metrics_response() -> Response:
    """The Prometheus text exposition of this server's metrics (every worker's, under gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    # content_type, not mimetype: Flask would add a second charset to prometheus' own.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def request_id_of(incoming: str) -> str:
    """The caller's X-Request-ID when it is plain, else a new one."""
    return incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex


def answered(method: str, route: str, status: int, started: float, request_id: str, error_code: str | None,
             bytes_in: int | None) -> None:
    """Count and time one answered request and write its access line: a refused request's one
    line, whose error code says why (no traceback goes with it)."""
    seconds = time.perf_counter() - started
    REQUESTS.labels(route, method, str(status)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
    access_log.info("%s %s %d%s", method, route, status, f" {error_code}" if error_code else "",
                    extra={"request_id": request_id, "method": method, "route": route, "status": status,
                           "duration_ms": round(seconds * 1e3, 3), "bytes_in": bytes_in or 0,
                           **({"error_code": error_code} if error_code else {})})


def install(app: Flask, models: list[tuple[str, str | None, list[str], str]]) -> None:
    """Publish the served models (name, created, providers, execution path); give every request an
    id, count and time it, and log one access line for it."""
    for name, created, providers, path in models:
        MODEL_INFO.labels(name, created or "", ",".join(providers), path).set(1)

    @app.before_request
    def start_request():
        g.request_id = request_id_of(request.headers.get("X-Request-ID", ""))
        g.started = time.perf_counter()
        IN_FLIGHT.inc()
        g.in_flight = True
        g.trace = tracing.request_started(request.method, request.url_rule.rule if request.url_rule else "unmatched",
                                          request.headers, g.request_id)

    @app.after_request
    def finish_request(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"  # never the raw path: bounded labels
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        answered(request.method, route, response.status_code, g.get("started", time.perf_counter()),
                 g.get("request_id", "-"), g.get("error_code"), request.content_length)
        tracing.request_finished(g.pop("trace", None), response.status_code)
        return response

    @app.teardown_request
    def end_request(exc=None):
        if g.pop("in_flight", False):
            IN_FLIGHT.dec()
        tracing.request_finished(g.pop("trace", None), 500)  # only if no response was made
