"""OpenTelemetry traces of each request's path, off unless the standard OTEL_* variables ask.

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or
OTEL_TRACES_EXPORTER (`otlp`, `console`) is set, and OTEL_SDK_DISABLED is not true. The SDK reads
the rest itself: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG),
OTEL_PROPAGATORS, OTEL_BSP_*. Every request gets a server span (continuing a caller's W3C
`traceparent`) with children for reading the body, decoding the images, waiting in the queue,
the encoder and the decoding; every model run gets a batch span linked to each request it served.

Each gunicorn worker starts its own provider when it builds the app, after the fork, so the
export thread lives in the process that records the spans. With tracing off nothing of
OpenTelemetry is imported, and each hook is one test of a module flag.
"""
from __future__ import annotations

import contextlib
import os
import time

TRACES_EXPORTERS = ("otlp", "console", "none")
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOLS = ("http/protobuf",)
TRUE = ("1", "true", "yes", "on")

_tracer = None      # set by start(): tracing is on
_NO_SPAN = contextlib.nullcontext()


def wanted_exporter(environ=None) -> str | None:
    """The span exporter the environment asks for (otlp or console), None for tracing off;
    a ValueError names a setting this server cannot honour."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in TRUE:
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter not in TRACES_EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: this server exports traces with "
                         f"{', '.join(TRACES_EXPORTERS)}")
    if not exporter:
        exporter = "otlp" if any(environ.get(name, "").strip() for name in ENDPOINTS) else "none"
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
    if exporter == "otlp" and protocol.strip() and protocol.strip() not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol.strip()!r}: this server sends OTLP over "
                         f"{', '.join(PROTOCOLS)}")
    return None if exporter == "none" else exporter


def enabled() -> bool:
    return _tracer is not None


def start(exporter=None, processor=None) -> bool:
    """Start this process's tracer provider when the environment asks for traces, or with the
    given exporter (tests: an in-memory one, with a SimpleSpanProcessor). Returns whether on."""
    global _tracer
    kind = None if exporter is not None else wanted_exporter()
    if exporter is None and kind is None:
        _tracer = None
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter is None:
        if kind == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these defaults.
    resource = Resource({"service.name": "caption-server", "process.pid": os.getpid()}).merge(Resource.create())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor((processor or BatchSpanProcessor)(exporter))
    _tracer = provider.get_tracer("caption-server")
    return True


def request_started(method: str, route: str, headers, request_id: str):
    """Open the request's server span (a child of the caller's `traceparent`) and make it current;
    returns what request_finished needs, or None with tracing off."""
    if _tracer is None:
        return None
    from opentelemetry import context, propagate, trace

    span = _tracer.start_span(f"{method} {route}", context=propagate.extract(headers), kind=trace.SpanKind.SERVER,
                              attributes={"http.request.method": method, "http.route": route,
                                          "caption.request_id": request_id})
    return span, context.attach(trace.set_span_in_context(span))


def request_finished(handle, status: int) -> None:
    if handle is None:
        return
    from opentelemetry import context, trace

    span, token = handle
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)
    span.end()
    context.detach(token)


def stage(name: str, **attributes):
    """A child span of the current one around a stage of the request (a no-op with tracing off)."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)


def current_context():
    """The current span's context, for a batch span to link to (None with tracing off)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span().get_span_context()


def wall_clock_ns(perf_counter_s: float) -> int:
    """A time.perf_counter() reading as epoch nanoseconds, as spans are stamped."""
    return time.time_ns() - int((time.perf_counter() - perf_counter_s) * 1e9)


def model_run_ns(started_s: float, timings_ms: dict) -> tuple[int, int, int]:
    """When a model run started, its encoder ended and its decoding ended, in epoch nanoseconds."""
    start = wall_clock_ns(started_s)
    encoded = start + int(timings_ms.get("encode", 0.0) * 1e6)
    return start, encoded, encoded + int(timings_ms.get("decode", 0.0) * 1e6)


def record_batch(links: list, started_s: float, timings_ms: dict, images: int, requests: int):
    """The span of one model run (started at `started_s` on perf_counter's clock), linked to
    every request it served, with its encoder and decoder as children. Returns its context."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    start, encoded, decoded = model_run_ns(started_s, timings_ms)
    batch = _tracer.start_span("caption batch", start_time=start, links=[trace.Link(c) for c in links if c],
                               attributes={"caption.batch.images": images, "caption.batch.requests": requests})
    within = trace.set_span_in_context(batch)
    _tracer.start_span("encoder", context=within, start_time=start).end(end_time=encoded)
    _tracer.start_span("decoder", context=within, start_time=encoded).end(end_time=decoded)
    batch.end(end_time=decoded)
    return batch.get_span_context()


def record_request_stages(request, queued_s: float, started_s: float, timings_ms: dict, batch, images: int) -> None:
    """Under span context `request`: its wait in the queue, and the encoder and decoder runs of
    the batch it joined (which the `caption.batch.span_id` attribute names)."""
    if _tracer is None or request is None:
        return
    from opentelemetry import trace

    parent = trace.set_span_in_context(trace.NonRecordingSpan(request))
    start, encoded, decoded = model_run_ns(started_s, timings_ms)
    joined = {"caption.batch.span_id": trace.format_span_id(batch.span_id),
              "caption.batch.trace_id": trace.format_trace_id(batch.trace_id), "caption.images": images}
    links = [trace.Link(batch)]
    _tracer.start_span("queue", context=parent, start_time=wall_clock_ns(queued_s),
                       attributes=joined).end(end_time=start)
    _tracer.start_span("encode", context=parent, start_time=start, links=links, attributes=joined).end(end_time=encoded)
    _tracer.start_span("decode", context=parent, start_time=encoded, links=links,
                       attributes=joined).end(end_time=decoded)


def log_fields() -> dict:
    """trace_id and span_id of the current span for a log line ({} with tracing off or outside a span)."""
    if _tracer is None:
        return {}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": trace.format_trace_id(context.trace_id), "span_id": trace.format_span_id(context.span_id)}
