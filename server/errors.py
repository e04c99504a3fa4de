"""The one client-error type: an HTTP status, a machine-readable code and a readable message."""


class RequestError(Exception):
    """A request the server will not caption; the app answers it as {"error": {"code", "message"}}
    with `status` and any `headers` (Retry-After on a 503, say)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def unavailable(code: str, message: str, retry_after_s: float) -> RequestError:
    """A 503 that tells the client when to come back (whole seconds, at least one)."""
    return RequestError(503, code, message, {"Retry-After": str(max(1, int(-(-retry_after_s // 1))))})
