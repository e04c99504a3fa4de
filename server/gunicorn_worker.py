"""The gunicorn worker class: gevent's, answering the errors gunicorn raises itself (a malformed
request line, headers too large, a bad chunked body) in the API's JSON error shape with an
X-Request-ID, as every answer of the app has, instead of gunicorn's HTML page."""
from __future__ import annotations

import json
import uuid

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's util.write_error, with a JSON body: {"error": {"code", "message"}}."""
    body = json.dumps({"error": {"code": reason.lower().replace(" ", "_"), "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-ID: {uuid.uuid4().hex}\r\n"
            "X-Content-Type-Options: nosniff\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class CaptionWorker(GeventWorker):
    """gunicorn's gevent worker with JSON error answers."""

    def init_process(self):
        # gunicorn's workers call util.write_error by module attribute when a request cannot be parsed.
        util.write_error = write_json_error
        super().init_process()
