"""Log set-up: one JSON object per line (LOG_FORMAT=json, the default) or plain text.

Every line logged while a request is being answered carries that request's id.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from . import tracing
from .process_settings import LOG_FORMAT

LOG_FORMATS = ("json", "text")
# LogRecord attributes that are not caller-supplied `extra` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's, or '-' outside a request; and
    with tracing on, the current span's `trace_id` and `span_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id()
        for name, value in tracing.log_fields().items():
            setattr(record, name, value)
        return True


def _current_request_id() -> str:
    flask = sys.modules.get("flask")  # gunicorn's master logs through this too, and never imports Flask
    if flask is not None and flask.has_request_context():
        return flask.g.get("request_id", "-")
    return "-"


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "pid", "request_id", "message", ...extra fields, "error"}."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "request_id": getattr(record, "request_id", _current_request_id()),
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"


def log_format() -> str:
    """LOG_FORMAT from the environment, checked."""
    value = LOG_FORMAT.value().strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT={value!r}: expected json or text")
    return value


def configure(level: str, fmt: str) -> None:
    """Send the root logger's records to stderr in the chosen format, with request ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Pillow's warnings about odd files become records, not raw lines


def as_json_line(line: bytes) -> bytes | None:
    """A line written to stderr, as a JSON log line: JSON objects pass unchanged, anything else
    (what a C library prints) is wrapped as a record of logger "stderr" (a warning, or an error
    for an "error: ..." line); blank lines vanish."""
    text = line.rstrip(b"\r")
    if not text.strip():
        return None
    if text.startswith(b"{"):
        try:
            json.loads(text)
            return text
        except ValueError:
            pass
    message = text.decode("utf-8", "replace")
    level = "error" if message.startswith("error: ") else "warning"  # a worker's one-line refusal to start
    return json.dumps({"time": _timestamp(time.time()), "level": level, "logger": "stderr", "pid": None,
                       "request_id": "-", "message": message}).encode()


class StderrRelay:
    """Routes file descriptor 2 of this process, and of every process it forks from now on,
    through a pipe whose reader writes `as_json_line` of each line to the real stderr.

    Python's own logging is already JSON; this catches what native code writes straight to the
    descriptor (libtiff's "Using code not yet in table.", say), which would otherwise break a
    one-object-per-line log stream."""

    def __init__(self):
        self.stderr = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self._relay, args=(read_end,), name="stderr-relay", daemon=True)
        self.thread.start()

    def _relay(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                out = [wrapped + b"\n" for line in lines if (wrapped := as_json_line(line)) is not None]
                if out:
                    os.write(self.stderr, b"".join(out))
        if (wrapped := as_json_line(pending)) is not None:
            os.write(self.stderr, wrapped + b"\n")

    def close(self, timeout: float = 2.0) -> None:
        """Point descriptor 2 back at the real stderr and let the relay write what is left.
        The relay ends once every process holding the pipe (the forked workers) has exited."""
        sys.stderr.flush()
        os.dup2(self.stderr, 2)
        self.thread.join(timeout)
