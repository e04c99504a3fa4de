"""The gRPC server's life inside a gunicorn worker: started once the worker has loaded the app,
refusing new calls as soon as the worker drains, finishing those it holds before the worker exits.

Each worker runs its own gRPC server on GRPC_PORT with SO_REUSEPORT, so the kernel spreads
connections over the workers as it spreads HTTP's over gunicorn's shared socket, and a call is
served by the same process, models and queue as a REST request, with no hop between processes.
Under gevent, grpcio's own polling is switched to gevent's (grpc.experimental.gevent) before any
gRPC object exists, and each call runs in a greenlet; the model work goes to native threads as
REST's does (server/batching.py).
"""
from __future__ import annotations

import logging
from concurrent import futures

log = logging.getLogger(__name__)
# Bytes a message may carry beyond the upload limit: the request's other fields.
ENVELOPE_BYTES = 64 * 1024


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


def start(app, host: str, port: int, max_calls: int):
    """A started gRPC server for the app's models on host:port; `max_calls` calls at once."""
    if _under_gevent():
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
    import grpc

    from . import grpc_service_pb2_grpc
    from .service import InferenceService

    config = app.extensions["captions"].config
    limit = config.max_upload_bytes + ENVELOPE_BYTES
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_calls), maximum_concurrent_rpcs=max_calls,
                         options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(app.extensions["captions"], app.extensions["readiness"]), server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    log.info("gRPC: the Open Inference Protocol on %s:%d", host, port)
    return server


def drain_when_asked(server, grace_s: float):
    """Stop taking calls once this worker drains (server/lifecycle.py), letting those in flight finish
    within `grace_s`; returns the event that is set when the server has stopped."""
    import threading
    import time

    from .. import lifecycle

    stopped = threading.Event()

    def watch():
        while not lifecycle.draining():
            time.sleep(0.2)  # a greenlet's sleep under gevent
        server.stop(grace_s).wait()
        stopped.set()

    threading.Thread(target=watch, name="grpc-drain", daemon=True).start()
    return stopped
