"""Whether the client of a request is still connected, asked without reading or blocking.

Used to drop queued work whose client has hung up before it reaches the model. The request body
has been read by then, so a readable socket that yields no bytes has been closed by the peer.
"""
from __future__ import annotations

import _socket
import socket
from typing import Callable


def peer_closed(fd: int) -> bool:
    """True when the peer of socket `fd` has closed or reset the connection."""
    # A bare _socket object over the same descriptor: the gevent socket's own recv would wait for
    # data, and MSG_DONTWAIT leaves the descriptor's blocking mode alone.
    try:
        probe = _socket.socket(fileno=fd)
    except OSError:
        return True
    try:
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.detach()


def client_connected(environ: dict) -> Callable[[], bool]:
    """A no-argument check for the request's connection (always True outside gunicorn)."""
    sock = environ.get("gunicorn.socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return lambda: True
    return lambda: not peer_closed(fd)
