"""Log set-up: one JSON object per line (LOG_FORMAT=json, the default) or plain text.

Every line logged while a request is being answered carries that request's id.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

LOG_FORMATS = ("json", "text")
# LogRecord attributes that are not caller-supplied `extra` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's, or '-' outside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id()
        return True


def _current_request_id() -> str:
    flask = sys.modules.get("flask")  # gunicorn's master logs through this too, and never imports Flask
    if flask is not None and flask.has_request_context():
        return flask.g.get("request_id", "-")
    return "-"


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "pid", "request_id", "message", ...extra fields, "error"}."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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
    value = os.environ.get("LOG_FORMAT", "json").strip().lower()
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
