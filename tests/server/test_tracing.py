"""OpenTelemetry traces: off unless OTEL_* asks; a traced request shows its stages, the batch it
joined and its caller's trace id (in-memory exporter); the gunicorn workers export over OTLP."""
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness.server_process import GunicornServer
from server import tracing
from server.app import create_app
from server.batching import MicroBatcher
from server.config import Config
from server.logs import JsonFormatter, RequestIdFilter
from tests.server.test_batching import SlowEngine, images, wait_for

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.mark.parametrize("environ, exporter", [
    ({}, None),
    ({"OTEL_SERVICE_NAME": "captions"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
])
def test_tracing_is_off_unless_the_environment_asks(environ, exporter):
    assert tracing.wanted_exporter(environ) == exporter


@pytest.mark.parametrize("environ, says", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
])
def test_settings_the_server_cannot_honour_are_refused(environ, says):
    with pytest.raises(ValueError, match=says):
        tracing.wanted_exporter(environ)


def test_with_tracing_off_the_hooks_do_nothing(monkeypatch):
    monkeypatch.setattr(tracing, "_tracer", None)
    assert tracing.request_started("GET", "/", {}, "id") is None
    with tracing.stage("read body"):
        pass
    assert tracing.current_context() is None and tracing.log_fields() == {}


@pytest.fixture
def spans(monkeypatch):
    """Tracing on for one test, into memory."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_tracer", None)
    tracing.start(exporter=exporter, processor=SimpleSpanProcessor)
    yield exporter
    monkeypatch.setattr(tracing, "_tracer", None)


def by_name(finished) -> dict:
    return {span.name: span for span in finished}


@pytest.fixture(scope="module")
def app(bundle_dir):
    return create_app(Config(bundle=bundle_dir, warmup=False))


def test_a_traced_request_shows_its_stages_batch_and_callers_trace(app, spans, trained_run):
    from pathlib import Path

    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("caption.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        response = app.test_client().post("/api/v1/captions", data={"image": (io.BytesIO(image), "a.jpg")},
                                          headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-1"})
    finally:
        access.removeHandler(handler)
    assert response.status_code == 200
    found = by_name(spans.get_finished_spans())
    server = found["POST /api/v1/captions"]
    assert trace.format_trace_id(server.context.trace_id) == CALLER_TRACE
    assert trace.format_span_id(server.parent.span_id) == CALLER_SPAN
    assert server.kind == trace.SpanKind.SERVER
    assert server.attributes["caption.request_id"] == "req-1" and server.attributes["http.response.status_code"] == 200
    for stage in ("read body", "decode images", "queue", "encode", "decode"):
        assert found[stage].parent.span_id == server.context.span_id, stage
        assert found[stage].context.trace_id == server.context.trace_id
    batch = found["caption batch"]
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert found["encoder"].parent.span_id == found["decoder"].parent.span_id == batch.context.span_id
    assert found["queue"].attributes["caption.batch.span_id"] == trace.format_span_id(batch.context.span_id)
    assert found["queue"].end_time <= found["encode"].start_time <= found["encode"].end_time <= found["decode"].end_time
    line = json.loads(log.getvalue().splitlines()[-1])
    assert line["trace_id"] == CALLER_TRACE and line["request_id"] == "req-1"


def test_a_protocol_request_is_traced_too(app, spans, bundle_dir):
    response = app.test_client().post(f"/v2/models/{bundle_dir.name}/infer", data=b"not json")
    assert response.status_code == 400
    server = by_name(spans.get_finished_spans())["POST /v2/models/<name>/infer"]
    assert server.attributes["http.response.status_code"] == 400


def test_the_batch_span_links_every_request_it_served(spans):
    batcher = MicroBatcher(SlowEngine(delay=0.3))
    contexts = {}

    def request(i):
        with tracing.stage(f"request {i}") as span:
            contexts[i] = span.get_span_context()
            batcher.caption(images(i))

    first = threading.Thread(target=request, args=(0,))
    first.start()
    wait_for(lambda: batcher.engine.batches)
    others = [threading.Thread(target=request, args=(i,)) for i in (1, 2)]
    for t in others:
        t.start()
    wait_for(lambda: len(batcher.pending) == 2)
    for t in [first, *others]:
        t.join()
    assert batcher.engine.batches[1][0] == [1, 2]  # the two that queued ran together
    finished = spans.get_finished_spans()
    batches = sorted((s for s in finished if s.name == "caption batch"), key=lambda s: s.start_time)
    assert [len(b.links) for b in batches] == [1, 2]
    assert {link.context.span_id for link in batches[1].links} == {contexts[1].span_id, contexts[2].span_id}
    for i in (1, 2):
        queue = next(s for s in finished if s.name == "queue" and s.parent.span_id == contexts[i].span_id)
        assert queue.attributes["caption.batch.span_id"] == trace.format_span_id(batches[1].context.span_id)


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: POST /v1/traces bodies, decoded, kept in `received`."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = {a.key: a.value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    Collector.received.append((resource, span))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_forked_workers_export_their_spans_over_otlp(bundle_dir, trained_run):
    from pathlib import Path

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    Collector.received = []
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "2",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
                             "OTEL_SERVICE_NAME": "captions-under-test", "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        server.wait_ready()
        image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
        workers = set(server.workers())
        seen_pids, sent = set(), 0
        deadline = time.time() + 60
        while seen_pids != workers and time.time() < deadline:
            trace_id = f"{sent + 1:032x}"
            response = requests.post(server.url + "/api/v1/captions", files={"image": image},
                                     headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01", "Connection": "close"})
            assert response.status_code == 200
            sent += 1
            time.sleep(0.2)
            seen_pids = {resource["process.pid"].int_value for resource, span in Collector.received}
        assert seen_pids == workers, f"spans from {seen_pids}, workers {workers}"
        servers = [(r, s) for r, s in Collector.received if s.name == "POST /api/v1/captions"]
        assert {r["service.name"].string_value for r, s in servers} == {"captions-under-test"}
        assert {s.trace_id.hex() for r, s in servers} <= {f"{i:032x}" for i in range(1, sent + 1)}
        assert {s.name for r, s in Collector.received} >= {"read body", "decode images", "queue", "encode", "decode",
                                                           "caption batch", "encoder", "decoder"}
        logged = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        assert any(entry.get("trace_id") == f"{1:032x}" and entry.get("logger") == "caption.access" for entry in logged)
    finally:
        server.stop()
        collector.shutdown()


def test_an_exporter_the_server_cannot_use_stops_start_up_with_one_line(bundle_dir):
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "OTEL_TRACES_EXPORTER": "zipkin"})
    try:
        assert server.process.wait(60) == 1
        assert "OTEL_TRACES_EXPORTER='zipkin'" in server.startup_error()
    finally:
        server.stop()
