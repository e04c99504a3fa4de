"""gunicorn settings for the caption server; every value comes from the environment.

| variable          | default    | meaning                                                   |
| HOST              | 127.0.0.1  | address to bind                                           |
| PORT              | 8000       | port to bind                                              |
| WEB_CONCURRENCY   | 1          | worker processes (each loads its own copy of the model)   |
| GUNICORN_THREADS  | 4          | request threads per worker (gthread)                      |
| GUNICORN_TIMEOUT  | 60         | seconds before a silent worker is killed and replaced     |
The model's own settings are CAPTION_* variables (server/config.py).
"""
import os
import sys


def _int(name: str, default: int, low: int = 1) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        sys.exit(f"error: {name}={raw!r}: expected an integer >= {low}")
    return value


bind = f"{os.environ.get('HOST', '127.0.0.1')}:{_int('PORT', 8000, 0)}"
# One worker whose onnxruntime sessions use both cores serves a single image fastest on a
# 2-core machine; threads let it read uploads and answer health checks while it computes.
workers = _int("WEB_CONCURRENCY", 1)
threads = _int("GUNICORN_THREADS", 4)
# gthread: a slow client holds one thread's connection, not a whole worker.
worker_class = "gthread"
timeout = _int("GUNICORN_TIMEOUT", 60)
graceful_timeout = 30
keepalive = 5
wsgi_app = "server.wsgi:application"
# Several servers may run on one machine (tests, blue/green); none needs gunicornc.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
proc_name = "caption-server"


def on_starting(server):
    """Check configuration and the bundle once in the master, so a bad setup stops start-up
    with one line and a non-zero exit before any worker starts."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    # Nothing here may import onnxruntime: a master that has loaded it forks workers that
    # abort at exit (its thread pools do not survive fork).
    from server.bundle import BundleError, load_bundle
    from server.config import Config, ConfigError

    try:
        config = Config.from_env()
        load_bundle(config.bundle, verify_checksums=False)
    except (BundleError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

