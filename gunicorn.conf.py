"""gunicorn settings for the caption server; every value comes from the environment. The process
settings (HOST, PORT, WEB_CONCURRENCY, GUNICORN_*, LOG_*, PROMETHEUS_MULTIPROC_DIR) and their
defaults are in server/process_settings.py; the model's own are CAPTION_* (server/config.py).
docs/operating.md lists both.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import process_settings as settings  # noqa: E402  (plain stdlib; safe in the master)
from server.logs import TEXT_FORMAT, log_format  # noqa: E402


def _int(setting: settings.ProcessSetting, low: int = 1) -> int:
    name, raw = setting.name, setting.value()
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        sys.exit(f"error: {name}={raw!r}: expected an integer >= {low}")
    return value


bind = f"{settings.HOST.value()}:{_int(settings.PORT, 0)}"
try:
    grpc_port = settings.grpc_port()
except ValueError as exc:
    sys.exit(f"error: {exc}")
# The layout study (python -m benchmarks.layouts, results/layouts.md) chose one worker whose
# encoder uses both cores, with onnxruntime's spinning on and micro-batching on. In its two
# runs that served a single image in 35.4 and 35.7 ms (spinning off: 36.0, 37.0) and 31.6-31.8
# captions/s at concurrency 8 with fair tails (p95 273-297 ms; 567-639 ms unbatched). Two
# one-thread workers serve 33.6-35.5/s but take 56-60 ms for a single image.
workers = _int(settings.WEB_CONCURRENCY)
# gevent, not gthread: gthread hands a connection to a thread as soon as its first bytes
# arrive, and a client that then sends its headers slowly holds that thread; 40 such
# connections froze a 2x2 gthread server (measured). Under gevent a slow client costs one
# greenlet. Inference runs in a native thread (server/batching.py), so the worker keeps
# reading requests meanwhile and batches those that queue up.
# (server/gunicorn_worker.py: gevent's worker, with gunicorn's own error pages in JSON.)
worker_class = "server.gunicorn_worker.CaptionWorker"
worker_connections = _int(settings.WORKER_CONNECTIONS)
timeout = _int(settings.TIMEOUT)
graceful_timeout = 30
keepalive = 5
wsgi_app = "server.wsgi:application"
# The master's pid, for the reload and drain signals: `pgrep -f` would match make's shell too.
pidfile = settings.PIDFILE.value() or None
# Several servers may run on one machine (tests, blue/green); none needs gunicornc.
control_socket_disable = True
# The app logs one access line per request itself (with its request id and duration), so
# gunicorn's own access log stays off (its logger would build each line anyway, and drop it).
accesslog = None
logger_class = "server.gunicorn_logging.AppAccessLogger"
errorlog = "-"
loglevel = settings.LOG_LEVEL.value()
if loglevel not in settings.LOG_LEVELS:
    sys.exit(f"error: LOG_LEVEL={loglevel!r}: expected {', '.join(settings.LOG_LEVELS[:-1])} or {settings.LOG_LEVELS[-1]}")
try:
    _format = log_format()
except ValueError as exc:
    sys.exit(f"error: {exc}")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "server.logs.JsonFormatter"}, "text": {"format": TEXT_FORMAT}},
    "filters": {"request_id": {"()": "server.logs.RequestIdFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                             "formatter": _format, "filters": ["request_id"]}},
    "loggers": {"gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False}},
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
}
# Workers share their Prometheus metrics through files in this folder (prometheus_client's
# multiprocess mode); it must be set before any worker imports prometheus_client.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="caption-metrics-"))
proc_name = "caption-server"


def on_starting(server):
    """Check configuration and the bundle once in the master, so a bad setup stops start-up
    with one line and a non-zero exit before any worker starts."""
    # Counters left by an earlier server in a reused folder would add to this one's.
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))

    # Nothing here may import onnxruntime: a master that has loaded it forks workers that
    # abort at exit (its thread pools do not survive fork).
    from bundle.format import BundleError, load_bundles
    from server.config import Config, ConfigError

    from server.tracing import wanted_exporter

    try:
        config = Config.from_env()
        wanted_exporter()  # the OTEL_* variables, which each worker reads again when it starts
        load_bundles(config.bundle_paths, verify_checksums=False)
        _grpc_port_is_free()
    except (BundleError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    # C libraries (libtiff) write raw lines to stderr; in JSON mode they are wrapped as records
    # (from here on: the one-line refusals above stay plain).
    if _format == "json":
        from server.logs import StderrRelay

        server.stderr_relay = StderrRelay()


def _grpc_port_is_free():
    """The workers share GRPC_PORT with SO_REUSEPORT, which would let them share it with another
    server's workers too: so the master checks, once, that nothing else holds it."""
    import socket

    if grpc_port is None:
        return
    with socket.socket(socket.AF_INET6 if ":" in settings.HOST.value() else socket.AF_INET) as probe:
        try:
            probe.bind((settings.HOST.value(), grpc_port))
        except OSError as exc:
            raise ValueError(f"GRPC_PORT={grpc_port} cannot be bound on {settings.HOST.value()} "
                             f"({exc.strerror}): another server holds it; set GRPC_PORT to a free port or off") from None


def post_worker_init(worker):
    """Let the app see when this worker starts to drain (readiness then answers 503); start its gRPC
    server (server/grpc_protocol/serving.py), which stops taking calls when the worker drains."""
    from server import lifecycle

    lifecycle.attach(worker)
    if grpc_port is not None:
        from server.grpc_protocol import serving

        server = serving.start(worker.wsgi, settings.HOST.value(), grpc_port, worker_connections)
        worker.grpc_stopped = serving.drain_when_asked(server, graceful_timeout)


def worker_exit(server, worker):
    """Let the gRPC calls this worker holds finish (within graceful_timeout) before it exits."""
    stopped = getattr(worker, "grpc_stopped", None)
    if stopped is not None:
        stopped.wait(graceful_timeout + 1)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (in-flight requests, model info) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this configuration made (one given from outside stays), and
    let the stderr relay write its last lines."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    if getattr(server, "stderr_relay", None):
        server.stderr_relay.close()
