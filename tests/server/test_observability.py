"""Metrics across gunicorn workers, request ids, and JSON log lines, on the live server."""
import json
import re
from pathlib import Path

import requests


def metric(text: str, name: str, **labels) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_metrics_add_up_over_workers(server, trained_run):
    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    before = requests.get(server.url + "/metrics").text
    route = "/api/v1/captions"
    sent, pids = 0, set()
    while sent < 12 or len(pids) < 2:  # new connections, until both workers have answered some
        assert sent < 60, f"one worker answered all {sent} requests"
        request_id = f"metrics-{sent}"
        assert requests.post(server.url + route, files={"image": image},
                             headers={"X-Request-ID": request_id}).status_code == 200
        sent += 1
        wait_for_line(server, f'"request_id": "{request_id}"', settle_s=0)
        pids |= {entry["pid"] for entry in map(json.loads, server.output().splitlines())
                 if entry.get("request_id") == request_id}
    assert requests.post(server.url + route, data=b"not an image", headers={"Content-Type": "image/png"}).status_code == 415
    requests.get(server.url + "/no/such/page")

    response = requests.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    after = response.text
    ok = dict(route=route, method="POST", status="200")
    assert metric(after, "caption_http_requests_total", **ok) - metric(before, "caption_http_requests_total", **ok) == sent
    assert metric(after, "caption_http_requests_total", route=route, status="415") >= 1
    # Raw paths never become labels: unknown pages share one.
    assert metric(after, "caption_http_requests_total", route="unmatched", status="404") >= 1
    assert "/no/such/page" not in after
    for stage in ("preprocess", "encode", "decode", "total"):
        gained = (metric(after, "caption_stage_seconds_count", stage=stage)
                  - metric(before, "caption_stage_seconds_count", stage=stage))
        assert gained == sent, stage
    assert metric(after, "caption_http_request_seconds_count", route=route) >= sent + 1
    # Two live workers, each serving the same model; /metrics itself is in flight while it is scraped.
    assert len([line for line in after.splitlines() if line.startswith("caption_model_info{")]) == 2
    assert metric(after, "caption_http_requests_in_flight") == 1


def test_request_ids_are_echoed_or_made(server):
    given = requests.get(server.url + "/healthz", headers={"X-Request-ID": "client-42.a:b"})
    assert given.headers["X-Request-ID"] == "client-42.a:b"
    made = requests.get(server.url + "/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    for hostile in ("x" * 129, "<script>", "a b"):
        replaced = requests.get(server.url + "/healthz", headers={"X-Request-ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])
    error = requests.post(server.url + "/api/v1/captions", data=b"", headers={"X-Request-ID": "bad-upload-1",
                                                                              "Content-Type": "image/jpeg"})
    assert error.status_code == 400 and error.headers["X-Request-ID"] == "bad-upload-1"


def test_logs_are_json_lines_with_the_request_id(server):
    requests.get(server.url + "/readyz", headers={"X-Request-ID": "log-check-7"})
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("request_id") == "log-check-7"]
    assert access, "no log line carries the request id"
    entry = access[-1]
    assert entry["logger"] == "caption.access" and entry["route"] == "/readyz" and entry["status"] == 200
    assert entry["duration_ms"] >= 0 and entry["level"] == "info" and isinstance(entry["pid"], int)
    # gunicorn's own lines (booting workers) are JSON too.
    assert any(e["logger"] == "gunicorn.error" for e in lines)
    non_json = [line for line in server.output().splitlines() if line.strip() and not line.startswith("{")]
    assert not non_json, non_json[:5]


def test_what_c_libraries_print_stays_inside_the_json_log(server):
    """libtiff prints its complaints straight to the process's stderr; they arrive wrapped as JSON."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "TIFF", compression="tiff_lzw")
    corrupt = bytearray(buffer.getvalue())
    corrupt[200:400] = b"\xff" * 200  # libtiff: "Using code not yet in table."
    response = requests.post(server.url + "/api/v1/captions", files={"image": ("bad.tif", bytes(corrupt))})
    assert response.status_code == 422
    lines = server.output().splitlines()
    wrapped = [json.loads(line) for line in lines if line.startswith("{") and '"logger": "stderr"' in line]
    assert any("not yet in table" in e["message"] and e["level"] == "warning" for e in wrapped), lines[-5:]
    non_json = [line for line in lines if line.strip() and not line.startswith("{")]
    assert not non_json, non_json[:5]


def test_a_refused_upload_logs_one_line_with_its_pid_and_request_id(server):
    """Client mistakes are info lines, one per request, saying why; never a traceback (gevent's
    hub printed one for every exception raised in its native threads)."""
    refusals = {"refused-415": (b"not an image at all", 415), "refused-400": (b"", 400),
                "refused-422": (_truncated_jpeg(), 422)}
    for request_id, (body, status) in refusals.items():
        response = requests.post(server.url + "/api/v1/captions", files={"image": ("x.jpg", body)},
                                 headers={"X-Request-ID": request_id})
        assert response.status_code == status, (request_id, response.text)
    wait_for_line(server, '"request_id": "refused-422"')
    lines = server.output().splitlines()
    assert not [line for line in lines if "Traceback" in line or "RequestError" in line], lines[-12:]
    for request_id, (_, status) in refusals.items():
        mine = [entry for entry in map(json.loads, lines) if entry.get("request_id") == request_id]
        assert len(mine) == 1, mine
        entry = mine[0]
        assert entry["level"] == "info" and isinstance(entry["pid"], int) and entry["status"] == status
        assert entry["error_code"] and entry["error_code"] in entry["message"]


def _truncated_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def wait_for_line(server, text: str, timeout_s: float = 10.0, settle_s: float = 0.3) -> None:
    """Until the server's log has a line with `text` (workers' lines reach it through a relay), and
    `settle_s` more for what the same request logged after it."""
    import time

    deadline = time.monotonic() + timeout_s
    while text not in server.output():
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.05)
    time.sleep(settle_s)
