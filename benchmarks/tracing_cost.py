"""What the OpenTelemetry hooks cost a request: this server with tracing off against the same
server before the hooks existed (a worktree of the commit before server/tracing.py), and with
tracing on (exporting over OTLP to a local sink), in one run, in rounds that alternate the order.
Each variant serves single 640x480 JPEGs to one client; each round's p50 ratio, and their median.
Beside it, the off hooks alone, timed in-process per request.

Usage: python -m benchmarks.tracing_cost [--bundle onnx_models/demo] [--rounds 4] [--seconds 10]
Writes benchmarks/results/tracing_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness.load import run_load
from harness.server_process import ROOT, GunicornServer

from .floor import machine
from .peers import scene_photos

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("before", "off", "on")


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps nothing."""

    exports = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.exports += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def commit_before_tracing() -> str:
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "server/tracing.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return added[-1] + "^"


def off_hooks_us(repeats: int = 200_000) -> float:
    """Microseconds the tracing hooks of one request take with tracing off."""
    from server import tracing

    assert not tracing.enabled()
    started = time.perf_counter()
    for _ in range(repeats):
        handle = tracing.request_started("POST", "/api/v1/captions", {}, "id")
        with tracing.stage("read body"):
            pass
        with tracing.stage("decode images"):
            pass
        tracing.current_context()
        tracing.enabled()
        tracing.log_fields()
        tracing.request_finished(handle, 200)
    return (time.perf_counter() - started) / repeats * 1e6


def serve_and_measure(env: dict, root: Path, photo: bytes, seconds: float) -> dict:
    server = GunicornServer(env, root=root)
    try:
        server.wait_ready(120)
        load = [({"files": {"image": ("photo.jpg", photo, "image/jpeg")}}, 200)]
        url = server.url + "/api/v1/captions"
        run_load(url, load, 1, 1.0)  # warm
        return run_load(url, load, 1, seconds).summary()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline", default=None, help="commit to compare with (default: the one before tracing)")
    args = parser.parse_args(argv)
    baseline = args.baseline or commit_before_tracing()
    sha = subprocess.run(["git", "rev-parse", "--short", baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    bundle = str(args.bundle.resolve())
    photo = scene_photos(1)[0]
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), baseline], cwd=ROOT, check=True,
                       capture_output=True)
        setups = {"before": ({"CAPTION_BUNDLE": bundle}, worktree),
                  "off": ({"CAPTION_BUNDLE": bundle}, ROOT),
                  "on": ({"CAPTION_BUNDLE": bundle, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}",
                          "OTEL_BSP_SCHEDULE_DELAY": "500"}, ROOT)}
        rounds = []
        try:
            for index in range(args.rounds):
                order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
                figures = {name: serve_and_measure(*setups[name], photo, args.seconds) for name in order}
                rounds.append({"order": list(order), **figures})
                print(f"round {index + 1}: " + ", ".join(f"{n} p50 {figures[n]['p50_ms']} ms" for n in VARIANTS))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    sink.shutdown()

    def ratios(a: str, b: str) -> list[float]:
        return [round(r[a]["p50_ms"] / r[b]["p50_ms"], 3) for r in rounds]

    results = {"machine": machine(), "bundle": str(args.bundle), "baseline_commit": sha, "seconds": args.seconds,
               "rounds": rounds, "off_hooks_us_per_request": round(off_hooks_us(), 3),
               "p50_ratio_off_over_before": ratios("off", "before"), "p50_ratio_on_over_off": ratios("on", "off"),
               "otlp_exports": Sink.exports}
    for key in ("p50_ratio_off_over_before", "p50_ratio_on_over_off"):
        results[key.replace("ratio", "ratio_median")] = round(statistics.median(results[key]), 3)
    results["p50_ms_median"] = {n: round(statistics.median(r[n]["p50_ms"] for r in rounds), 1) for n in VARIANTS}
    (RESULTS / "tracing_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "tracing_cost.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    p50 = results["p50_ms_median"]
    return "\n".join([
        "# What tracing costs a request", "",
        f"Machine: {results['machine']}. One client, single 640x480 JPEGs, {len(results['rounds'])} rounds of "
        f"{results['seconds']:g} s per variant, alternating order; `before` is commit {results['baseline_commit']}.", "",
        "| | before the hooks | tracing off | tracing on (OTLP) |", "| --- | --- | --- | --- |",
        f"| p50 ms (median of rounds) | {p50['before']} | {p50['off']} | {p50['on']} |", "",
        f"p50 ratio, tracing off over before, per round: {results['p50_ratio_off_over_before']} "
        f"(median {results['p50_ratio_median_off_over_before']}). Tracing on over off: "
        f"{results['p50_ratio_on_over_off']} (median {results['p50_ratio_median_on_over_off']}).", "",
        f"The hooks themselves with tracing off: {results['off_hooks_us_per_request']} us per request.", ""])


if __name__ == "__main__":
    raise SystemExit(main())
