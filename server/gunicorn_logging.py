"""gunicorn's logger without its access log: the app writes one access line per request itself
(server/observability.py). gunicorn builds its own whenever a logging config is given, as
gunicorn.conf.py gives one, and then drops it: 8 % of the event loop's time under a flood of
refused requests. Standard library and gunicorn only: the master loads it."""
from gunicorn.glogging import Logger


class AppAccessLogger(Logger):
    """gunicorn's Logger, its access log off."""

    @property
    def access_log_enabled(self) -> bool:
        return False

    def access(self, resp, req, environ, request_time) -> None:
        return None
