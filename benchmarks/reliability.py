"""Reliability figures against the real server: overload (bounded queue, deadlines, abandoned
work; photos, small images, and small images from clients that ignore Retry-After), a request of
huge images, a soak mixing good and bad requests, kill -9 of a worker under
load, slow clients, and start-up with broken bundles.

Usage: python -m benchmarks.reliability [--bundle onnx_models/demo] [--soak-seconds 120]
Writes benchmarks/results/reliability.json and .md. The tests run the same scenarios (harness.scenarios).
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from PIL import Image

from harness.scenarios import (broken_bundles, huge_images, kill_worker_under_load, overload, png, slow_clients,
                               soak)
from harness.server_process import GunicornServer

from .floor import machine

RESULTS = Path(__file__).parent / "results"


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "reliability.md").write_text(markdown(results))


def soak_memory(s: dict) -> str:
    """The soak's memory row (results from before the quarters were counted have no such count)."""
    trace = f"{s['rss_mb_after_warmup']} -> {s['rss_mb_half_way']} -> {s['rss_mb_at_end']} MB"
    if "quarters_with_growth_over_3_percent" not in s:
        return (f"| soak: worker memory | RSS growth over the second half at most {100 * s['rss_growth_max']:.1f} % "
                f"(whole soak {100 * s['rss_growth_whole_soak']:.1f} %; {trace}) |")
    return (f"| soak: worker memory | grew by more than 3 % in {s['quarters_with_growth_over_3_percent']} of 4 quarters "
            f"(a leak grows in all 4); second half {100 * s['rss_growth_max']:.1f} %, whole soak "
            f"{100 * s['rss_growth_whole_soak']:.1f} % ({trace}) |")


def overload_rows(name: str, o: dict, images: str) -> list[str]:
    """An overload's two rows: its answers, and /healthz meanwhile."""
    p = o["patient"]
    waiting = ("each waiting out a 503's Retry-After" if o.get("honour_retry_after", True)
               else "each sending again as soon as it is answered, Retry-After ignored")
    return [
        f"| {name}: {o['clients']} clients x {o['images_per_request']}-image requests ({images}) for "
        f"{o['seconds']} s, {waiting} | "
        f"{p['requests']} answers: {p['statuses']}; {p['shed_503_without_retry_after']} 503 without Retry-After, "
        f"{p['connection_errors']} lost; slowest 200 in {p['max_200_ms']} ms, slowest 503 in {p['max_503_ms']} ms; "
        f"p50 {p['p50_ms']} ms |",
        f"| {name}: /healthz every 50 ms meanwhile | {o['healthz']['checks']} checks, {o['healthz']['failed']} failed; "
        f"p50 {o['healthz']['p50_ms']} ms, p99 {o['healthz']['p99_ms']} ms, max {o['healthz']['max_ms']} ms |",
    ]


def markdown(results: dict) -> str:
    """reliability.md from reliability.json."""
    s, k, w = results["soak"], results["kill_worker"], results["slow_clients"]
    o, h = results["overload"], results["huge_images"]
    i = o["impatient"]
    lines = [
        "# Reliability", "", f"Machine: {results['machine']}. Written by `python -m benchmarks.reliability`.", "",
        f"Overload and huge images: the default server (1 worker, default settings: {results['defaults']}). "
        f"The rest: {results['workers']} workers.", "",
        "| check | result |", "| --- | --- |",
        *overload_rows("overload", o, "640x480 JPEGs"),
        *(overload_rows("overload, small images", results["overload_small"], "299x299 JPEGs")
          if "overload_small" in results else []),
        *(overload_rows("flood", results["flood"], "299x299 JPEGs") if "flood" in results else []),
        f"| overload: the same clients hanging up after {i['timeout_s']} s | {i['requests']} requests "
        f"({i['statuses']}; 0 = the client gave up); {i['images_computed']:g} images computed, "
        f"{i['dropped_because_client_left']:g} requests dropped because their client had left; after the last "
        f"client left: {i['images_computed_after_clients_left']:g} images computed, busy {i['busy_after_clients_left_s']} s |",
        f"| {h['images']} PNGs of {h['megapixels_each']} MP in one request ({h['body_mb']} MB) | "
        f"{h['many']['status']} {h['many']['code']} in {h['many']['ms']} ms; one such PNG alone: "
        f"{h['one']['status']} in {h['one']['ms']} ms; /healthz max {h['healthz']['max_ms']} ms "
        f"({h['healthz']['checks']} checks); worker grew {h['rss_growth_mb']} MB |",
        f"| soak: {s['seconds']} s at concurrency {s['concurrency']}, good and bad requests mixed | "
        f"{s['requests']} requests, {s['server_errors_5xx']} 5xx, {s['connection_errors']} lost, "
        f"{s['unexpected_status']} with an unexpected status; p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms |",
        soak_memory(s),
        f"| kill -9 of 1 of {k['workers']} workers under load | {k['failed_during']} of {k['during']['requests']} "
        f"requests failed; replaced in {k.get('respawn_s')} s, new worker ready in {k.get('ready_s')} s; "
        f"longest request {k['longest_request_ms']} ms (timeout {k['request_timeout_s']} s); "
        f"after: {k['after']['requests']} requests, {k['after']['server_errors_5xx'] + k['after']['connection_errors']} failed |",
        f"| {w['slow_connections']} half-sent requests held open | /healthz {w['healthz_status']} in {w['healthz_ms']} ms, "
        f"caption {w['caption_status']} in {w['caption_ms']} ms |",
    ]
    for name, b in results["broken_bundles"].items():
        lines.append(f"| start-up with a {name} bundle | exit {b['exit_code']} after {b['seconds']} s: `{b['message']}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--soak-seconds", type=float, default=120)
    parser.add_argument("--overload-seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.bundle / "bundle.json").is_file():
        print(f"error: no bundle at {args.bundle} (run 'make demo')")
        return 2
    scene = png((299, 299), (90, 90, 90))
    from server.config import Config

    defaults = Config()
    results = {"machine": machine(), "workers": args.workers,
               "defaults": f"queue {defaults.max_queue_images} images, deadline {defaults.request_timeout_s:g} s, "
                           f"batches of {defaults.max_batch_size}, {defaults.max_request_pixels / 1e6:g} MP per request"}
    server = GunicornServer({"CAPTION_BUNDLE": str(args.bundle)})
    try:
        server.wait_ready()
        photo = io.BytesIO()
        Image.effect_noise((640, 480), 40).convert("RGB").save(photo, "JPEG")
        results["overload"] = overload(server, photo.getvalue(), seconds=args.overload_seconds)
        small = io.BytesIO()
        Image.effect_noise((299, 299), 40).convert("RGB").save(small, "JPEG")
        results["overload_small"] = overload(server, small.getvalue(), seconds=args.overload_seconds,
                                             abandon_after_s=None)
        results["flood"] = overload(server, small.getvalue(), seconds=args.overload_seconds, abandon_after_s=None,
                                    honour_retry_after=False)
        results["huge_images"] = huge_images(server)
    finally:
        server.stop()
    server = GunicornServer({"CAPTION_BUNDLE": str(args.bundle), "WEB_CONCURRENCY": str(args.workers)})
    try:
        server.wait_ready()
        results |= {"soak": soak(server, scene, args.soak_seconds),
                   "slow_clients": slow_clients(server, scene),
                   "kill_worker": kill_worker_under_load(server, scene)}
    finally:
        server.stop()
    results["broken_bundles"] = broken_bundles(args.bundle)
    write_results(results)
    print((RESULTS / "reliability.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
