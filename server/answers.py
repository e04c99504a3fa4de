"""What every answer shares, whether Flask or the shedding in front of it (server/shedding.py)
makes it: the security headers, the error body, and reading what a request left of its body."""
from __future__ import annotations

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
DISCARD_PIECE = 1 << 20


def is_protocol_path(path: str) -> bool:
    """Whether `path` is one of the Open Inference Protocol's (under /v2)."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, code: str, message: str) -> dict:
    """The JSON API's error shape, {"error": {"code", "message"}}; under /v2, the Open Inference
    Protocol's, {"error": message}."""
    return {"error": message} if is_protocol_path(path) else {"error": {"code": code, "message": message}}


def discard_unread_body(environ: dict, content_length: int | None, limit: int) -> None:
    """Read what a route left of a body (a request refused before its upload was read) in large
    pieces. gunicorn discards it 1 KB at a time, copying the rest of the body each time: 1-6 ms of
    the event loop per 550 KB body (0.2-0.5 ms here); under overload those refusals held /healthz
    for up to 300 ms. A body over `limit` is left to gunicorn, which closes the connection."""
    if content_length and content_length <= limit:
        body = environ["wsgi.input"]
        while body.read(DISCARD_PIECE):
            pass
