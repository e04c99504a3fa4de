"""Overload, deadlines, huge images and graceful drain against the real server with its default
settings, through the scenarios (harness.scenarios) that `python -m benchmarks.reliability` reports."""
import os
import signal
import time

import pytest
import requests
from PIL import Image

from harness.scenarios import SlowRequest, huge_images, overload
from harness.server_process import GunicornServer
from server.config import Config

from .test_uploads import encode

DEFAULTS = Config()


@pytest.fixture(scope="module")
def default_server(bundle_dir):
    """One worker with every setting at its default, as `make serve` runs."""
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir)})
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def overloaded(default_server):
    # Small bodies: the checks are about queueing; what 640x480 photos cost is in reliability.md.
    scene = encode(Image.effect_noise((299, 299), 40).convert("RGB"), "JPEG")
    return overload(default_server, scene, clients=48, images=4, seconds=4, abandon_after_s=0.3)


def test_overload_gets_200_or_503_with_retry_after_within_the_deadline(overloaded):
    patient = overloaded["patient"]
    assert set(patient["statuses"]) <= {"200", "503"}, patient["statuses"]
    assert patient["statuses"].get("200", 0) > 0 and patient["statuses"].get("503", 0) > 0
    assert patient["shed_503_without_retry_after"] == 0 and patient["connection_errors"] == 0
    # Within the deadline plus one batch (measured: 1.6 s at most, benchmarks/results/reliability.json;
    # a batch of 16 takes up to 2 s on the slowest machines).
    assert max(patient["max_200_ms"], patient["max_503_ms"]) < DEFAULTS.request_timeout_s * 1000 + 3000


def test_health_checks_are_answered_under_overload(overloaded):
    health = overloaded["healthz"]
    assert health["checks"] > 10 and health["failed"] == 0
    print("healthz under overload:", health)
    # benchmarks/results/reliability.md has the measured figures (18.7 ms small images, 25.7 ms photos);
    # this test's own run: 20-46 ms here, with the 48 clients on the same 2 cores.
    assert health["max_ms"] < 400


def test_work_of_clients_that_left_is_not_computed(overloaded):
    impatient = overloaded["impatient"]
    assert impatient["statuses"].get("0", 0) > 0  # clients did give up
    assert impatient["dropped_because_client_left"] > 0
    # What was already running when the last client left: one batch, and at most one more.
    assert impatient["images_computed_after_clients_left"] <= 2 * DEFAULTS.max_batch_size


def test_a_request_of_huge_images_neither_stalls_nor_swells_the_worker(default_server):
    result = huge_images(default_server, images=16)
    assert result["many"] == {**result["many"], "status": 413, "code": "request_too_large"}
    assert result["one"]["status"] == 200
    # Decoding one 39 MP PNG takes hundreds of milliseconds; health checks meanwhile are not held up by it.
    assert result["healthz"]["failed"] == 0 and result["healthz"]["max_ms"] < result["one"]["ms"] / 2
    assert result["rss_growth_mb"] < 500


def test_sigterm_drains_the_worker(bundle_dir):
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir)})
    try:
        server.wait_ready()
        [worker] = server.workers()
        scene = encode(Image.effect_noise((299, 299), 40).convert("RGB"), "JPEG")
        kept_alive = requests.Session()
        assert kept_alive.get(server.url + "/readyz").status_code == 200
        in_flight = SlowRequest(server.url, scene)
        time.sleep(0.3)
        os.kill(worker, signal.SIGTERM)
        time.sleep(0.2)
        ready = kept_alive.get(server.url + "/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        # A request sent over the kept-alive connection is answered, not lost: by the draining worker (which
        # then closes the connection) or, when gunicorn closed it first, by its replacement. Which one
        # depends on when gunicorn's thread sees the signal: a full suite on a loaded machine saw the second.
        last = kept_alive.post(server.url + "/api/v1/captions", files={"image": scene})
        assert last.status_code == 200 and len(last.json()["captions"]) == 1
        answer = in_flight.response()
        assert answer.status_code == 200 and len(answer.json()["captions"]) == 16
        kept_alive.close()  # the client is done: an idle kept-alive connection holds a worker for its keep-alive time
        deadline = time.monotonic() + 30
        while worker in server.workers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker not in server.workers()  # it exited once its work was done (the master starts another)
        # A TERM that reaches a worker still booting is lost (gunicorn's handlers are not yet set), and
        # stopping the server would wait out the graceful timeout: stop once the replacement is up.
        server.wait_ready()
    finally:
        server.stop()


def test_without_micro_batching_inference_still_leaves_the_event_loop_free(bundle_dir):
    from harness.scenarios import HealthProbe

    server = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "CAPTION_MICRO_BATCHING": "0"})
    try:
        server.wait_ready()
        scene = encode(Image.effect_noise((299, 299), 40).convert("RGB"), "JPEG")
        files = [("image", ("s.jpg", scene, "image/jpeg"))] * 16
        with HealthProbe(server.url, period=0.01) as health:
            started = time.perf_counter()
            response = requests.post(server.url + "/api/v1/captions?beam_size=3", files=files, timeout=60)
            took_ms = (time.perf_counter() - started) * 1e3
        assert response.status_code == 200
        assert health.summary()["failed"] == 0 and health.summary()["max_ms"] < took_ms / 2
    finally:
        server.stop()
