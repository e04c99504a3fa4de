"""Batch captioning: `caption --ray` (Ray Data, local Ray) against the one-process `caption` command.

Usage: python -m benchmarks.ray_batch [--bundle onnx_models/demo] [--images 200 1000]

For each job size, generated scenes (JPEG and PNG) are captioned by `caption FOLDER --out F.jsonl`
and then by `caption --ray FOLDER --out DIR` (one-CPU actors, one per core), each a fresh process,
back to back. Two rates per command: end to end (the process's whole wall time, start-up
included) and once started (the captioning alone: the one-process command's own loop time; for
Ray, the first shard's start to the last shard's end, leaving out starting Ray and the actors).
The rows of the two commands are compared. Results: ray_batch.json and ray_batch.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CAPTION = Path(sys.executable).parent / "caption"
SINGLE_SUMMARY = re.compile(r"(\d+) captioned, (\d+) skipped in ([0-9.]+) s")
RAY_SUMMARY = re.compile(r"\((\d+) shards on (\d+) actors, ([0-9.]+) images/s once started\)")


def timed(command: list[str]) -> tuple[float, str]:
    """Run a command to the end; (wall seconds, its standard error)."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stderr


def measure(bundle: Path, images: int, scratch: Path) -> dict:
    """Both commands on one generated folder of `images` scenes."""
    data = scratch / f"scenes-{images}"
    subprocess.run([sys.executable, "-m", "training.synthetic", "--out", str(data), "--images", str(images),
                    "--seed", "11"], check=True, capture_output=True)
    folder = data / "Images"
    single_out, ray_out = scratch / f"single-{images}.jsonl", scratch / f"ray-{images}"
    single_wall, single_log = timed([str(CAPTION), str(folder), "--bundle", str(bundle), "--out", str(single_out),
                                     "--quiet"])
    ray_wall, ray_log = timed([str(CAPTION), "--ray", str(folder), "--bundle", str(bundle), "--out", str(ray_out),
                               "--quiet"])
    captioned, skipped, single_loop = SINGLE_SUMMARY.search(single_log).groups()
    shards, actors, ray_rate = RAY_SUMMARY.search(ray_log).groups()
    single_rows = single_out.read_text().splitlines()
    ray_rows = [line for shard in sorted(ray_out.glob("captions-*.jsonl")) for line in shard.read_text().splitlines()]
    single_rate = images / float(single_loop)
    return {"images": images, "captioned": int(captioned), "skipped": int(skipped),
            "rows_identical": single_rows == ray_rows,
            "single": {"wall_s": round(single_wall, 2), "images_per_s": round(images / single_wall, 2),
                       "images_per_s_once_started": round(single_rate, 2)},
            "ray": {"wall_s": round(ray_wall, 2), "images_per_s": round(images / ray_wall, 2),
                    "images_per_s_once_started": float(ray_rate), "shards": int(shards), "actors": int(actors),
                    "images_per_s_per_actor": round(float(ray_rate) / int(actors), 2)},
            "ray_vs_single": round(images / ray_wall / (images / single_wall), 3),
            "ray_vs_single_once_started": round(float(ray_rate) / single_rate, 3)}


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_batch.json").write_text(json.dumps(results, indent=2))
    (out / "ray_batch.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    """ray_batch.md from ray_batch.json."""
    lines = ["# Batch captioning: `caption --ray` against the one-process `caption`", "",
             f"Machine: {results['machine']}. Bundle: {results['bundle']}. Written by `python -m benchmarks.ray_batch`; "
             "each figure from one run, the two commands back to back on the same generated scenes.", "",
             "| images | one process: end to end | once started | Ray: end to end | once started | "
             "Ray / one process, end to end | once started | actors (1 CPU each) | per actor, once started | "
             "rows identical |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        s, y = r["single"], r["ray"]
        lines.append(f"| {r['images']} | {s['images_per_s']} img/s ({s['wall_s']} s) | {s['images_per_s_once_started']} "
                     f"img/s | {y['images_per_s']} img/s ({y['wall_s']} s) | {y['images_per_s_once_started']} img/s | "
                     f"{r['ray_vs_single']:.2f}x | {r['ray_vs_single_once_started']:.2f}x | {y['actors']} | "
                     f"{y['images_per_s_per_actor']} img/s | {'yes' if r['rows_identical'] else 'NO'} |")
    lines += ["", "End to end includes starting the process, loading the bundle and, for Ray, starting a local "
              "Ray and its actors (a fixed cost of several seconds that a long job spreads thin). "
              "On a cluster the per-actor rate is the figure that multiplies: one actor per CPU, each with "
              "its own onnxruntime thread."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--images", type=int, nargs="+", default=[200, 1000], help="job sizes (default 200 1000)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.bundle / "bundle.json").exists():
        print(f"error: no bundle at {args.bundle}; build the demo with `make demo` or pass --bundle", file=sys.stderr)
        return 2
    from .floor import machine

    with tempfile.TemporaryDirectory() as scratch:
        runs = [measure(args.bundle.resolve(), n, Path(scratch)) for n in args.images]
    results = {"machine": machine(), "bundle": str(args.bundle), "runs": runs}
    write_results(results, args.results)
    print((args.results / "ray_batch.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
