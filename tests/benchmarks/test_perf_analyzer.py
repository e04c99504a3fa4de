"""Triton's perf_analyzer profiles the live server over the Open Inference Protocol (installed
by `make perf-analyzer`, which `make test` runs first)."""
import base64
import json
import re
from pathlib import Path

import requests

from benchmarks.perf_analyzer import input_data, profile
from server.inference_protocol import deserialize_bytes


def test_input_data_holds_each_image_as_a_binary_bytes_element():
    images = [b"\xff\xd8 one", b"\x89PNG two"]
    data = input_data(images)["data"]
    assert [deserialize_bytes(base64.b64decode(d["image"]["b64"])) for d in data] == [[i] for i in images]


def infer_counts(server) -> dict[str, float]:
    """Protocol infer requests answered so far, by status."""
    text = requests.get(server.url + "/metrics").text
    pattern = r'caption_http_requests_total\{method="POST",route="/v2/models/<name>/infer",status="(\d+)"\} (\S+)'
    return {status: float(value) for status, value in re.findall(pattern, text)}


def test_perf_analyzer_profiles_the_server(server, bundle_dir, trained_run):
    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    before = infer_counts(server)
    rows = profile(server.url, bundle_dir.name, [image], [1, 2], window_ms=1000, stability_percent=100)
    assert [r["concurrency"] for r in rows] == [1, 2]
    assert all(r["captions_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows)
    after = infer_counts(server)
    sent = {status: count - before.get(status, 0) for status, count in after.items() if count > before.get(status, 0)}
    assert set(sent) == {"200"}, sent  # every request perf_analyzer sent was captioned (the server is shared)
