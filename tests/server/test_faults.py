"""Load, worker faults, slow clients and broken bundles, with the functions that
`python -m benchmarks.reliability` records (harness.scenarios)."""
import os

import pytest
from PIL import Image

from harness.scenarios import broken_bundles, kill_worker_under_load, slow_clients, soak
from harness.server_process import GunicornServer

from .test_uploads import encode

# 60 s keeps the suite under its 20 minutes; `python -m benchmarks.reliability` soaks for 120 s.
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))


@pytest.fixture(scope="module")
def own_server(bundle_dir):
    """A server these tests may overload and kill workers of."""
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "2"})
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scene():
    return encode(Image.effect_noise((320, 240), 40).convert("RGB"), "JPEG")


def test_soak_mixing_good_and_bad_requests(own_server, scene):
    result = soak(own_server, scene, SOAK_SECONDS, concurrency=16)
    print("soak:", result)
    assert result["requests"] > 100
    assert result["server_errors_5xx"] == 0 and result["connection_errors"] == 0
    assert result["unexpected_status"] == 0
    assert result["workers_after"] == result["workers_before"]
    # No leak: a worker's memory may settle once (onnxruntime's arena meeting a new batch shape),
    # at any moment of the soak, but does not keep growing.
    # The whole soak's growth is that settling (23 % for the demo in benchmarks/results/reliability.json);
    # p99 a few times what that soak measured (1.3 s).
    assert result["quarters_with_growth_over_3_percent"] <= 2 and result["rss_growth_whole_soak"] < 0.5
    assert result["p99_ms"] < 6000


def test_slow_clients_do_not_freeze_the_server(own_server, scene):
    result = slow_clients(own_server, scene, connections=100)
    assert result["healthz_status"] == 200 and result["caption_status"] == 200
    assert result["healthz_ms"] < 250 and result["caption_ms"] < 1000  # measured: 3.7 and 41 ms


def test_kill_9_of_a_worker_under_load(own_server, scene):
    result = kill_worker_under_load(own_server, scene, seconds=12, concurrency=4, request_timeout=30)
    print("kill -9:", result)
    assert result["failed_during"] <= 4  # at most the requests in flight on the killed worker
    assert result["during"]["requests"] > result["failed_during"] * 5  # the other worker kept serving
    assert result["respawn_s"] < 2 and result["ready_s"] < 10  # measured: 0.25 and 3.5 s
    assert result["longest_request_ms"] < 5000                 # measured: 0.48 s
    assert result["after"]["requests"] > 0
    assert result["after"]["server_errors_5xx"] == result["after"]["connection_errors"] == 0


def test_broken_bundles_stop_start_up_with_one_line(bundle_dir):
    results = broken_bundles(bundle_dir)
    assert results["missing"]["exit_code"] != 0 and "no model bundle" in results["missing"]["message"]
    assert results["truncated"]["exit_code"] != 0 and "does not match its checksum" in results["truncated"]["message"]
    assert results["mismatched"]["exit_code"] != 0 and "do not match bundle.json" in results["mismatched"]["message"]
    assert all(r["seconds"] < 30 for r in results.values())
