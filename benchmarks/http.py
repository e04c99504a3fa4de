"""HTTP latency and throughput of the real gunicorn server on loopback, for several
worker layouts and client concurrencies, each for a fixed time: first as `make serve` starts it
(on the path it chooses, server/path_choice.py; again with CAPTION_OPENVINO=off where OpenVINO is
installed), then by hand on onnxruntime fp32, the same
layouts again on the bundle's int8 variant where it exists, and with the encoder on OpenVINO
(bf16; the int8 variant's quantised operators in int8) where this processor and install have bf16.

Usage: python -m benchmarks.http [--bundle onnx_models/demo] [--int8 onnx_models/demo-int8] [--seconds 10]
Writes benchmarks/results/http.json and http.md (or under --results).
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from bundle.format import load_bundle

from .floor import FULL, QUICK, Effort, encoder_floor, machine
from harness.load import LoadResult, run_load
from harness.server_process import GunicornServer

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (1, 2, 4, 8, 16)
PAIRED = (1, 8)       # the concurrencies the targets name
PAIRED_CHUNKS = 4
# What a user gets without tuning: nothing set (auto said outright, so an inherited setting does not count).
DEFAULT_LAYOUT = ("as make serve starts it", {"CAPTION_PROVIDERS": "auto"})
# The same where OpenVINO is kept out: what a processor without OpenVINO's fast paths gets (issue 36's
# second target). Measured only where OpenVINO is installed; elsewhere it is the default layout.
NO_OPENVINO_LAYOUT = ("as make serve starts it, CAPTION_OPENVINO=off", {"CAPTION_PROVIDERS": "auto",
                                                                       "CAPTION_OPENVINO": "off"})
# (name, environment): one worker using both cores for onnxruntime, or one worker per core; the
# fp32 encoder on onnxruntime (the OpenVINO layouts below set their own providers).
LAYOUTS = (
    ("1 worker x 2 onnxruntime threads", {"CAPTION_PROVIDERS": "cpu", "WEB_CONCURRENCY": "1",
                                          "CAPTION_INTRA_OP_THREADS": "2"}),
    ("2 workers x 1 onnxruntime thread", {"CAPTION_PROVIDERS": "cpu", "WEB_CONCURRENCY": "2",
                                          "CAPTION_INTRA_OP_THREADS": "1"}),
)


def scene_jpeg() -> bytes:
    """A 640x480 JPEG, the size of a typical upload."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((640, 480)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def paired_load(url: str, request, concurrency: int, seconds: float, encoder_gflop: float,
                effort: Effort = FULL) -> dict:
    """One point measured in PAIRED_CHUNKS chunks, each right after a fresh sgemm peak, so that each
    chunk's ratio to the floor compares two things measured at the same moment (these machines'
    speed drifts by up to 2x within minutes); the point's ratios are the chunks' medians."""
    merged, chunks = LoadResult(0.0), []
    for _ in range(PAIRED_CHUNKS):
        floor_ms = encoder_gflop / effort.sgemm_peak() * 1e3
        chunk = run_load(url, request, concurrency, seconds / PAIRED_CHUNKS)
        point = chunk.summary()
        chunks.append({"floor_ms": round(floor_ms, 2), "p50_ms": point["p50_ms"],
                       "throughput_rps": point["throughput_rps"]})
        merged.extend(chunk)
    paired = {"chunks": chunks,
              "p50_over_floor": round(float(np.median([c["p50_ms"] / c["floor_ms"] for c in chunks])), 3),
              "throughput_x_floor": round(float(np.median([c["throughput_rps"] * c["floor_ms"] / 1000
                                                           for c in chunks])), 3)}
    return {**merged.summary(), "paired": paired}


def measure_layout(bundle: Path, env: dict, seconds: float, concurrency: tuple = CONCURRENCY,
                   encoder_gflop: float | None = None, effort: Effort = FULL) -> list[dict]:
    """Every concurrency's point; with `encoder_gflop`, those in PAIRED also against floors taken as they run."""
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle), **env})
    try:
        server.wait_ready()
        url, request = server.url + "/api/v1/captions", [({"files": {"image": scene_jpeg()}}, 200)]
        run_load(url, request, 2, min(2.0, seconds))  # warm every worker
        path = requests.get(server.url + "/api/v1/model", timeout=10).json()["execution_path"]["path"]
        return [{"concurrency": c, "execution_path": path,
                 **(paired_load(url, request, c, seconds, encoder_gflop, effort)
                    if encoder_gflop and c in PAIRED else run_load(url, request, c, seconds).summary())}
                for c in concurrency]
    finally:
        server.stop()


def openvino_capabilities_here() -> list[str]:
    """OpenVINO's CPU capabilities (FP32, BF16, INT8...), or [] where it is not installed."""
    from server.openvino_encoder import OpenVINOUnavailable, openvino_capabilities

    try:
        return openvino_capabilities()
    except OpenVINOUnavailable:
        return []


def openvino_bf16_available() -> bool:
    return "BF16" in openvino_capabilities_here()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--int8", type=Path, default=Path("onnx_models/demo-int8"),
                        help="the bundle's int8 variant (python -m export.int8); measured when it exists")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for http.json and http.md")
    parser.add_argument("--quick", action="store_true", help="every step with quick peaks (to check that it runs)")
    args = parser.parse_args(argv)
    effort = QUICK if args.quick else FULL
    bf16_here = openvino_bf16_available()
    floors = {}

    def measured(name: str, bundle: Path, env: dict) -> list[dict]:
        # The floor again just before each layout: these machines' speed drifts by up to 2x within a run.
        # OpenVINO's own matmul peaks (10 s or so) only where a layout runs on OpenVINO: the others
        # are judged against the fp32 floor alone.
        openvino_layout = env.get("CAPTION_PROVIDERS", "auto").startswith(("openvino", "auto"))
        floors[name] = encoder_floor(args.bundle, precisions=bf16_here and openvino_layout, effort=effort)
        # --quick: the paired levels only; the others run the same code at other concurrencies.
        return measure_layout(bundle, env, args.seconds, PAIRED if args.quick else CONCURRENCY,
                              encoder_gflop=floors[name]["encoder_gflop"], effort=effort)

    on_openvino = {"CAPTION_PROVIDERS": "openvino,cpu", "CAPTION_STRICT_PROVIDERS": "1"}
    defaults = (DEFAULT_LAYOUT, NO_OPENVINO_LAYOUT) if openvino_capabilities_here() else (DEFAULT_LAYOUT,)
    layouts = {name: measured(name, args.bundle, env) for name, env in (*defaults, *LAYOUTS)}
    results = {"machine": machine(effort), "quick": args.quick, "seconds_per_point": args.seconds,
               "layouts": layouts, "default_layout": DEFAULT_LAYOUT[0], "bf16_here": bf16_here}
    if len(defaults) > 1:
        results["no_openvino_layout"] = NO_OPENVINO_LAYOUT[0]
    if bf16_here:
        bf16 = {f"{name}, OpenVINO bf16 encoder": measured(f"{name}, OpenVINO bf16 encoder", args.bundle,
                                                           {**env, **on_openvino}) for name, env in LAYOUTS}
        layouts.update(bf16)
        results["openvino_layouts"] = list(bf16)
    if (args.int8 / "bundle.json").is_file():
        int8 = {f"{name}, int8 encoder": measured(f"{name}, int8 encoder", args.int8, env) for name, env in LAYOUTS}
        layouts.update(int8)
        results["int8_layouts"] = list(int8)
        results["int8_check"] = load_bundle(args.int8).variant_check()
        if bf16_here:
            # OpenVINO runs the quantised operators in int8 (VNNI) and the rest in bf16. One layout: for
            # OpenVINO, one worker with both cores led at every concurrency in the bf16 rows.
            name, env = LAYOUTS[0]
            layouts[f"{name}, int8 encoder on OpenVINO"] = measured(f"{name}, int8 encoder on OpenVINO", args.int8,
                                                                    {**env, **on_openvino})
            results["openvino_int8_layouts"] = [f"{name}, int8 encoder on OpenVINO"]
    results["floors"] = floors
    results["floor"] = next(iter(floors.values()))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "http.json").write_text(json.dumps(results, indent=2))
    (args.results / "http.md").write_text(markdown(results))
    print((args.results / "http.md").read_text())
    return 0


def markdown(results: dict) -> str:
    """http.md from http.json."""
    floors = results["floors"]
    floor_range = sorted(f["floor_ms"] for f in floors.values())
    lines = ["# HTTP latency and throughput", "",
             f"Machine: {results['machine']}. Greedy captions of a 640x480 JPEG over loopback, "
             f"{results['seconds_per_point']:g} s "
             f"per point, after warm-up. The encoder's floor is measured again before each layout (the sgemm "
             f"peak drifts): {floor_range[0]} to {floor_range[-1]} ms in this run; each layout's ratios use its own. "
             "Written by `python -m benchmarks.http`.", "",
             f"Concurrency {' and '.join(map(str, PAIRED))}: {PAIRED_CHUNKS} chunks, each right after its own sgemm "
             "peak; their ratios are the medians of the chunks' (marked *).", "",
             "| layout | concurrency | captions/s | x (1000 / floor) | p50 ms | p95 ms | p99 ms | p50 / floor | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, points in results["layouts"].items():
        floor_ms = floors[name]["floor_ms"]
        for p in points:
            errors = p["server_errors_5xx"] + p["connection_errors"] + p["unexpected_status"]
            paired = p.get("paired")
            throughput_x = f"{paired['throughput_x_floor']:.2f}*" if paired else f"{p['throughput_rps'] * floor_ms / 1000:.2f}"
            p50_x = f"{paired['p50_over_floor']:.2f}*" if paired else f"{p['p50_ms'] / floor_ms:.2f}"
            chosen = name in (DEFAULT_LAYOUT[0], NO_OPENVINO_LAYOUT[0]) and "execution_path" in p
            where = f", on {p['execution_path']}" if chosen else ""
            lines.append(f"| {name}{where} (floor {floor_ms} ms) | {p['concurrency']} | {p['throughput_rps']} | "
                         f"{throughput_x} | {p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p50_x} | {errors} |")
    client = [p["client_cpu_ms_per_request"] for points in results["layouts"].values() for p in points]
    lines += ["", f"The load generator runs on the same cores and used {min(client)} to {max(client)} ms of CPU per "
                  "request (bodies encoded once, connections kept alive)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
