"""The serving layout study: gunicorn workers x onnxruntime threads x thread spinning x memory
arena x micro-batching x queue delay, each measured over HTTP for single-image latency (concurrency 1) and
throughput (concurrency 8), so the defaults in gunicorn.conf.py and server/config.py follow
the winner.

Usage: python -m benchmarks.layouts [--bundle onnx_models/demo] [--seconds 8]
Writes benchmarks/results/layouts.json and layouts.md (or under --results).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .floor import FULL, QUICK, encoder_floor, machine
from .http import measure_layout

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (1, 8)


def layout(workers: int, threads: int, spinning: bool, batching: bool, arena: bool = True,
           queue_delay_ms: float = 0) -> tuple:
    name = (f"{workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}, "
            f"spinning {'on' if spinning else 'off'}, batching {'on' if batching else 'off'}"
            + ("" if arena else ", arena off") + (f", queue delay {queue_delay_ms:g} ms" if queue_delay_ms else ""))
    # onnxruntime's settings, studied on onnxruntime (left to itself the server may choose OpenVINO).
    return name, {"CAPTION_PROVIDERS": "cpu", "WEB_CONCURRENCY": str(workers), "CAPTION_INTRA_OP_THREADS": str(threads),
                  "CAPTION_SPINNING": str(int(spinning)), "CAPTION_MICRO_BATCHING": str(int(batching)),
                  "CAPTION_CPU_ARENA": str(int(arena)), "CAPTION_MAX_QUEUE_DELAY_MS": f"{queue_delay_ms:g}"}


LAYOUTS = (
    layout(1, 2, spinning=True, batching=False),
    layout(1, 2, spinning=False, batching=False),
    layout(1, 2, spinning=True, batching=True),
    layout(1, 2, spinning=False, batching=True),
    layout(2, 1, spinning=True, batching=False),
    layout(2, 1, spinning=True, batching=True),
    layout(2, 2, spinning=False, batching=True),
    layout(2, 1, spinning=True, batching=True, arena=False),
    # Triton's max_queue_delay: a batch that is not full waits this long for more requests.
    layout(1, 2, spinning=True, batching=True, queue_delay_ms=5),
    layout(1, 2, spinning=True, batching=True, queue_delay_ms=20),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for layouts.json and layouts.md")
    parser.add_argument("--quick", action="store_true", help="every step with quick peaks (to check that it runs)")
    args = parser.parse_args(argv)
    effort = QUICK if args.quick else FULL
    floor = encoder_floor(args.bundle, effort=effort)
    floor_ms = floor["floor_ms"]
    results = {"machine": machine(effort), "quick": args.quick,
               "floor": floor, "seconds_per_point": args.seconds, "layouts": {}}
    for name, env in LAYOUTS:
        results["layouts"][name] = {"env": env, "points": measure_layout(args.bundle, env, args.seconds, CONCURRENCY)}
        one, eight = results["layouts"][name]["points"]
        print(f"{name}: c=1 p50 {one['p50_ms']} ms ({one['p50_ms'] / floor_ms:.2f}x floor); c=8 "
              f"{eight['throughput_rps']}/s ({eight['throughput_rps'] * floor_ms / 1000:.2f}x), p95 {eight['p95_ms']} ms",
              flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "layouts.json").write_text(json.dumps(results, indent=2))
    (args.results / "layouts.md").write_text(markdown(results))
    print((args.results / "layouts.md").read_text())
    return 0


def markdown(results: dict) -> str:
    """layouts.md from layouts.json."""
    floor_ms = results["floor"]["floor_ms"]
    lines = ["# Serving layouts", "",
             f"Machine: {results['machine']}. Greedy captions of a 640x480 JPEG over loopback, "
             f"{results['seconds_per_point']:g} s per "
             f"point. Encoder floor {floor_ms} ms. Written by `python -m benchmarks.layouts`.", "",
             "| layout | c=1 p50 ms | c=1 p50 / floor | c=8 captions/s | c=8 x (1000 / floor) | c=8 p50 ms | c=8 p95 ms "
             "| c=8 p99 ms | errors |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in results["layouts"].items():
        one, eight = entry["points"]
        errors = sum(p["server_errors_5xx"] + p["connection_errors"] + p["unexpected_status"] for p in entry["points"])
        lines.append(f"| {name} | {one['p50_ms']} | {one['p50_ms'] / floor_ms:.2f} | {eight['throughput_rps']} | "
                     f"{eight['throughput_rps'] * floor_ms / 1000:.2f} | {eight['p50_ms']} | {eight['p95_ms']} | "
                     f"{eight['p99_ms']} | {errors} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
