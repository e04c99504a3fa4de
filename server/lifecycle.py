"""Where this worker process is in its life: serving, or draining after a SIGTERM.

gunicorn.conf.py attaches the gunicorn worker once it has loaded the app. On SIGTERM gunicorn
marks the worker not alive, closes its listening socket and lets the requests it holds finish
(up to graceful_timeout), closing each kept-alive connection after the request it brings; from
then on readiness answers 503, so the load balancer sends new work elsewhere.
"""
from __future__ import annotations

_worker = None


def attach(worker) -> None:
    """Remember the gunicorn worker that runs this process."""
    global _worker
    _worker = worker


def draining() -> bool:
    """Whether this process has been asked to stop and only finishes what it holds."""
    return _worker is not None and not _worker.alive
