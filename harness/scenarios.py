"""The reliability scenarios against a live server: overload (bounded queue, deadlines, abandoned
work), a request of huge images, a soak mixing good and bad requests, kill -9 of a worker under
load, slow clients, and start-up with broken bundles. benchmarks.reliability records their figures;
the tests assert on them."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from .load import run_load
from .server_process import GunicornServer, rss_kb


def png(size, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


class SlowRequest:
    """A caption request of 16 images at beam 5, sent from a thread: still in flight a moment later,
    when a test signals the server."""

    def __init__(self, url: str, image: bytes):
        files = [("image", ("s.jpg", image, "image/jpeg"))] * 16
        self.answer: list[requests.Response] = []
        self.thread = threading.Thread(target=lambda: self.answer.append(
            requests.post(url + "/api/v1/captions?beam_size=5", files=files, timeout=60)))
        self.thread.start()

    def response(self) -> requests.Response:
        self.thread.join()
        return self.answer[0]


class HealthProbe:
    """Times GET /healthz every `period` seconds while the `with` block runs, from a process of
    its own: in the load generator's process it would wait for the GIL behind the client threads
    and time them rather than the server."""

    def __init__(self, url: str, period: float = 0.05):
        self.url, self.period = url + "/healthz", period
        self.latencies_ms: list[float] = []
        self.failed = 0

    def __enter__(self) -> "HealthProbe":
        self.process = subprocess.Popen([sys.executable, "-m", "harness.health_probe", self.url, str(self.period)],
                                        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()  # "started": its first check is about to go out
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self.process.communicate("stop\n", timeout=60)
        result = json.loads(out)
        self.latencies_ms, self.failed = result["latencies_ms"], result["failed"]

    def summary(self) -> dict:
        ms = np.array(self.latencies_ms or [0.0])
        return {"checks": len(self.latencies_ms), "failed": self.failed, "p50_ms": round(float(np.median(ms)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


def metric(server: GunicornServer, name: str, **labels) -> float:
    """The sum of a metric's samples (with these labels) on the server's /metrics."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def overload(server: GunicornServer, scene: bytes, clients: int = 48, images: int = 4, seconds: float = 15,
             abandon_after_s: float | None = 0.8, honour_retry_after: bool = True) -> dict:
    """`clients` clients sending `images`-image requests as fast as they are answered (after a
    503, once its Retry-After has passed, or at once when not `honour_retry_after`), first patient
    (30 s timeout), then impatient (they hang up after `abandon_after_s`; None: no such phase);
    /healthz is timed while the patient ones run. After the impatient clients leave, how much work
    the server still did."""
    url = server.url + "/api/v1/captions"
    load = [({"files": [("image", ("scene.jpg", scene, "image/jpeg"))] * images}, 200)]
    with HealthProbe(server.url) as health:
        patient = run_load(url, load, clients, seconds, timeout_s=30, honour_retry_after=honour_retry_after)
    result = {"clients": clients, "images_per_request": images, "seconds": seconds,
              "honour_retry_after": honour_retry_after,
              "patient": {**patient.summary(), "statuses": dict(Counter(map(str, patient.statuses))),
                          "max_200_ms": patient.latency_max_ms(200), "max_503_ms": patient.latency_max_ms(503)},
              "healthz": health.summary()}
    if abandon_after_s is None:
        return result
    computed = metric(server, "caption_batch_images_sum")
    gone_before = metric(server, "caption_requests_shed_total", reason="client_gone")
    impatient = run_load(url, load, clients, seconds, timeout_s=abandon_after_s, honour_retry_after=True)
    left_at = time.monotonic()
    at_leave = last = metric(server, "caption_batch_images_sum")
    last_change = left_at
    while time.monotonic() - last_change < 1.0 and time.monotonic() - left_at < 30:
        time.sleep(0.05)
        now = metric(server, "caption_batch_images_sum")
        if now != last:
            last, last_change = now, time.monotonic()
    return {
        **result,
        "impatient": {**impatient.summary(), "timeout_s": abandon_after_s,
                      "statuses": dict(Counter(map(str, impatient.statuses))),
                      "images_computed": at_leave - computed,
                      "dropped_because_client_left": metric(server, "caption_requests_shed_total",
                                                            reason="client_gone") - gone_before,
                      "images_computed_after_clients_left": last - at_leave,
                      "busy_after_clients_left_s": round(last_change - left_at, 2)},
    }


def huge_images(server: GunicornServer, images: int = 16, size: tuple = (7200, 5400)) -> dict:
    """One request of `images` PNGs of `size` (39 MP each, about 2 MB together), then one such
    PNG alone; /healthz timed throughout, worker memory before and after."""
    big = png(size, (200, 30, 30))
    url = server.url + "/api/v1/captions"
    before = {pid: rss_kb(pid) for pid in server.workers()}
    with HealthProbe(server.url, period=0.02) as health:
        started = time.perf_counter()
        many = requests.post(url, files=[("image", ("big.png", big, "image/png"))] * images, timeout=60)
        many_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        one = requests.post(url, files={"image": ("big.png", big, "image/png")}, timeout=60)
        one_ms = (time.perf_counter() - started) * 1e3
    after = {pid: rss_kb(pid) for pid in server.workers()}
    return {"images": images, "megapixels_each": round(size[0] * size[1] / 1e6, 1),
            "body_mb": round(images * len(big) / 2**20, 2),
            "many": {"status": many.status_code, "code": many.json().get("error", {}).get("code"),
                     "ms": round(many_ms, 1)},
            "one": {"status": one.status_code, "ms": round(one_ms, 1)},
            "healthz": health.summary(),
            "rss_growth_mb": round(max((after[p] - before[p]) / 1024 for p in before if p in after), 1)}


def mixed_requests(scene: bytes) -> list:
    """Good and bad requests with the status each must get."""
    return [
        ({"files": {"image": scene}}, 200),
        ({"files": {"image": b"not an image"}}, 415),
        ({"files": {"image": scene}, "params": {"beam_size": "3"}}, 200),
        ({"files": {"image": b""}}, 400),
        ({"files": {"image": png((640, 480), (200, 30, 30))}}, 200),
        ({"files": {"image": scene[: len(scene) // 2]}}, 422),
        ({"files": {"image": scene}, "params": {"beam_size": "99"}}, 422),
        ({"files": [("image", scene), ("image", scene)]}, 200),
    ]


def soak(server: GunicornServer, scene: bytes, seconds: float, concurrency: int = 16) -> dict:
    """Load for `seconds` after a warm-up; RSS of each worker after the warm-up and at every quarter.

    A leak grows in every quarter. onnxruntime's memory arena may still grow once, at whatever
    moment micro-batches first meet an allocation pattern the warm-up did not (seen: 555 -> 754 MB
    in the first half of one soak, 617 -> 801 MB in the second half of another, then flat), so the
    leak figure is how many quarters a worker grew in, not how much one step was."""
    requests_to_send = mixed_requests(scene)
    run_load(server.url + "/api/v1/captions", requests_to_send, concurrency, min(10.0, seconds / 4))
    samples = [{pid: rss_kb(pid) for pid in server.workers()}]
    timers = [threading.Timer(seconds * q / 4, lambda: samples.append({pid: rss_kb(pid) for pid in server.workers()}))
              for q in (1, 2, 3)]
    for timer in timers:
        timer.start()
    result = run_load(server.url + "/api/v1/captions", requests_to_send, concurrency, seconds)
    for timer in timers:
        timer.join()
    samples.append({pid: rss_kb(pid) for pid in server.workers()})
    before, middle, after = samples[0], samples[2], samples[-1]

    def growth(start: dict, end: dict) -> float:
        return max(((end[p] - start[p]) / start[p] for p in start if p in end), default=0.0)

    def quarters_grown(pid: int) -> int:
        return sum(1 for a, b in zip(samples, samples[1:]) if pid in a and pid in b and (b[pid] - a[pid]) / a[pid] > 0.03)

    mb = lambda rss: {str(p): round(v / 1024, 1) for p, v in rss.items()}  # noqa: E731
    return {**result.summary(), "concurrency": concurrency, "seconds": round(result.duration_s, 1),
            "workers_before": sorted(before), "workers_after": sorted(after),
            "rss_mb_after_warmup": mb(before), "rss_mb_half_way": mb(middle), "rss_mb_at_end": mb(after),
            "rss_growth_whole_soak": round(growth(before, after), 4), "rss_growth_max": round(growth(middle, after), 4),
            "quarters_with_growth_over_3_percent": max((quarters_grown(p) for p in before), default=0)}


def worker_logged_ready(log_text: str, pid: int) -> bool:
    """Whether worker `pid` has logged its warm-up as done (the server logs JSON lines)."""
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("pid") == pid and entry.get("message", "").startswith("ready: warm-up captions done"):
            return True
    return False


def kill_worker_under_load(server: GunicornServer, scene: bytes, seconds: float = 12, concurrency: int = 4,
                           request_timeout: float = 30) -> dict:
    """kill -9 one worker a few seconds into a load; how many requests failed, how fast the
    master replaced the worker and how fast the new one was ready."""
    workers = server.workers()
    victim = workers[0]
    outcome: dict = {}

    def kill_later():
        time.sleep(seconds / 4)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while time.monotonic() - killed_at < 30:
            current = server.workers()
            if len(current) == len(workers) and victim not in current:
                outcome["respawn_s"] = round(time.monotonic() - killed_at, 2)
                new = (set(current) - set(workers)).pop()
                while time.monotonic() - killed_at < 60:
                    if worker_logged_ready(server.output(), new):
                        outcome["ready_s"] = round(time.monotonic() - killed_at, 2)
                        return
                    time.sleep(0.05)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_later)
    killer.start()
    result = run_load(server.url + "/api/v1/captions", [({"files": {"image": scene}}, 200)], concurrency, seconds,
                      timeout_s=request_timeout)
    killer.join()
    after = run_load(server.url + "/api/v1/captions", [({"files": {"image": scene}}, 200)], concurrency, 3)
    return {**outcome, "workers": len(workers), "during": result.summary(),
            "failed_during": result.count(lambda s: s != 200), "after": after.summary(),
            "longest_request_ms": round(max(result.latencies_ms), 1), "request_timeout_s": request_timeout}


def slow_clients(server: GunicornServer, scene: bytes, connections: int = 100) -> dict:
    """Hold `connections` half-sent requests open, then time a health check and a caption."""
    host, port = "127.0.0.1", server.port
    held = []
    try:
        for _ in range(connections):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"POST /api/v1/captions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
            held.append(sock)
        time.sleep(0.5)
        started = time.perf_counter()
        health = requests.get(server.url + "/healthz", timeout=10).status_code
        health_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        caption = requests.post(server.url + "/api/v1/captions", files={"image": scene}, timeout=10).status_code
        caption_ms = (time.perf_counter() - started) * 1e3
    finally:
        for sock in held:
            sock.close()
    return {"slow_connections": connections, "healthz_status": health, "healthz_ms": round(health_ms, 1),
            "caption_status": caption, "caption_ms": round(caption_ms, 1)}


def broken_bundles(bundle: Path) -> dict:
    """Start the server on a missing, a truncated and a mismatched bundle: exit code, time, message."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        truncated = Path(tmp) / "truncated"
        shutil.copytree(bundle, truncated)
        graph = truncated / "decoder_step.opt.onnx"
        graph.write_bytes(graph.read_bytes()[:2000])
        mismatched = Path(tmp) / "mismatched"
        shutil.copytree(bundle, mismatched)
        manifest = json.loads((mismatched / "bundle.json").read_text())
        manifest["graphs"]["encoder"]["outputs"][0]["name"] = "embedding"
        (mismatched / "bundle.json").write_text(json.dumps(manifest))
        for name, path in (("missing", Path(tmp) / "missing"), ("truncated", truncated), ("mismatched", mismatched)):
            started = time.monotonic()
            server = GunicornServer({"CAPTION_BUNDLE": str(path)})
            try:
                code = server.process.wait(60)
            finally:
                server.stop()
            results[name] = {"exit_code": code, "seconds": round(time.monotonic() - started, 2),
                             "message": server.startup_error()}
    return results
