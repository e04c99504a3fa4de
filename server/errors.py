"""The one client-error type: an HTTP status, a machine-readable code and a readable message."""


class RequestError(Exception):
    """A client mistake; the app answers it as {"error": {"code", "message"}} with `status`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
