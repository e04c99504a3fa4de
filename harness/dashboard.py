"""The Grafana dashboard (deploy/grafana/caption-server.json) against a real Prometheus: Debian's
`prometheus` scraping a live server every second while a mixed load runs (captions over REST and
gRPC, refused uploads, requests past their deadline), then each panel's queries as Grafana would
send them. tests/deploy/test_dashboard.py checks that every query returns data; docs/dashboard_preview.py
plots them for docs/operating.md (Grafana itself is not packaged where this project builds).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from .load import run_load
from .server_process import ROOT, free_port

DASHBOARD = ROOT / "deploy" / "grafana" / "caption-server.json"
# What Grafana puts for $__rate_interval at a 1 s scrape interval and a short time range: 4 scrapes or more.
RATE_INTERVAL = "15s"


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def expression(target: dict) -> str:
    """A panel target's PromQL with Grafana's variables filled in as Grafana would."""
    return target["expr"].replace("$__rate_interval", RATE_INTERVAL)


class Prometheus:
    """A real Prometheus on a free loopback port scraping `targets` (host:port) every second."""

    def __init__(self, targets: list[str], folder: Path | None = None):
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise RuntimeError("prometheus is not installed: make prometheus (Debian's package)")
        self.folder = Path(folder or tempfile.mkdtemp(prefix="prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.folder / "prometheus.yml"
        # JSON is YAML: the scrape job as the k8s annotations describe it (/metrics on the HTTP port).
        config.write_text(json.dumps({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "scrape_configs": [{"job_name": "caption-server", "metrics_path": "/metrics",
                                                          "static_configs": [{"targets": targets}]}]}))
        self.log = open(self.folder / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_scraping(self, timeout: float = 60) -> None:
        """Until Prometheus answers and has scraped its target at least once, successfully."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("prometheus exited: " + (self.folder / "prometheus.log").read_text()[-2000:])
            try:
                up = self.query("up")
                if up and all(float(sample["value"][1]) == 1 for sample in up):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError("prometheus did not scrape the server in time")

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector (or scalar as one sample); RuntimeError when Prometheus refuses it."""
        answer = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10).json()
        if answer["status"] != "success":
            raise RuntimeError(f"{promql}: {answer.get('error')}")
        data = answer["data"]
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]

    def query_range(self, promql: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        answer = requests.get(self.url + "/api/v1/query_range", timeout=10,
                              params={"query": promql, "start": start, "end": end, "step": step}).json()
        if answer["status"] != "success":
            raise RuntimeError(f"{promql}: {answer.get('error')}")
        return answer["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def finite_values(result: list[dict]) -> list[float]:
    """The finite numbers in a query's result (histogram_quantile gives NaN where nothing was observed)."""
    values = [float(sample["value"][1]) for sample in result if "value" in sample]
    values += [float(v) for sample in result for _, v in sample.get("values", [])]
    return [v for v in values if math.isfinite(v)]


def mixed_load(server, image: bytes, model: str, seconds: float) -> dict:
    """Traffic that gives every panel something to show: captions from several clients at once (so
    they queue and batch), refused uploads, requests whose 1 ms deadline passes (shed), and gRPC calls."""
    import tritonclient.grpc as triton_grpc

    grpc_calls = []

    def grpc_client():
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        tensor = triton_grpc.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=object))
        stop = time.time() + seconds
        while time.time() < stop:
            client.infer(model, [tensor])
            grpc_calls.append(1)

    thread = threading.Thread(target=grpc_client)
    thread.start()
    caption = ({"files": {"image": ("scene.png", image)}}, 200)
    mix = [caption, caption, caption,
           ({"files": {"image": ("notes.png", b"not a picture")}}, 415),
           ({"files": {"image": ("scene.png", image)}, "params": {"timeout_ms": "1"}}, 503)]
    rest = run_load(server.url + "/api/v1/captions", mix, 6, seconds).summary()
    thread.join()
    return {"rest": rest, "grpc_calls": len(grpc_calls)}
