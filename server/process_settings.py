"""The process settings (not CAPTION_*) that gunicorn.conf.py and the logging read: names, defaults
and meanings, in one place. Standard library only, since gunicorn's master imports it before it
forks the workers."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSetting:
    name: str
    default: str      # as the environment would give it; "" for none
    meaning: str

    def value(self) -> str:
        return os.environ.get(self.name, self.default)


def grpc_port() -> int | None:
    """GRPC_PORT as a port number, or None for `off`; ValueError with a one-line reason otherwise."""
    raw = GRPC_PORT.value().strip()
    if raw.lower() == "off":
        return None
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 65535):
        raise ValueError(f"GRPC_PORT={raw!r}: expected a port number (1-65535) or off")
    return int(raw)


HOST = ProcessSetting("HOST", "127.0.0.1", "address to bind")
PORT = ProcessSetting("PORT", "8000", "port to bind")
GRPC_PORT = ProcessSetting("GRPC_PORT", "8001", "port for the Open Inference Protocol over gRPC, on `HOST` (every worker "
                           "serves it, sharing the port); `off`: no gRPC")
WEB_CONCURRENCY = ProcessSetting("WEB_CONCURRENCY", "1", "gunicorn worker processes (each holds its own model)")
WORKER_CONNECTIONS = ProcessSetting("GUNICORN_WORKER_CONNECTIONS", "1000",
                                    "open connections per worker (`gevent` worker class, so slow clients cost a "
                                    "greenlet, not a thread)")
TIMEOUT = ProcessSetting("GUNICORN_TIMEOUT", "60", "seconds before a silent worker is killed and replaced")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL = ProcessSetting("LOG_LEVEL", "info", "`debug`, `info`, `warning` or `error`")
LOG_FORMAT = ProcessSetting("LOG_FORMAT", "json", "`json` (one object per line, with request ids) or `text`")
PIDFILE = ProcessSetting("PIDFILE", "", "a file for the master's process id, for `kill -HUP` (reload) and `-TERM` (drain and "
                                      "stop); `make serve` sets `caption-server.pid`")
METRICS_DIR = ProcessSetting("PROMETHEUS_MULTIPROC_DIR", "",
                             "where the workers share their metrics (default: a new temporary folder, removed at exit)")

PROCESS_SETTINGS = (HOST, PORT, GRPC_PORT, WEB_CONCURRENCY, WORKER_CONNECTIONS, TIMEOUT, LOG_LEVEL, LOG_FORMAT, PIDFILE, METRICS_DIR)
