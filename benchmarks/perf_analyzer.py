"""Triton's perf_analyzer against this server, over the Open Inference Protocol: the tool teams
that run Triton already measure with, pointed at this server as it is.

perf_analyzer is not on PyPI on its own (the `perf-analyzer` package there is an empty
placeholder); tritonclient's manylinux wheels up to 2.50.0 carry the binary. `--install` takes it
from that wheel with the CUDA runtime library it links (it needs no GPU) into .tools/perf_analyzer;
it also needs Debian's libb64-0d (`make perf-analyzer` installs both).

Usage: python -m benchmarks.perf_analyzer [--bundle onnx_models/demo] [--concurrency 1 2 4 8]
Writes benchmarks/results/perf_analyzer.{json,md}.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bundle.format import load_bundle
from harness.server_process import ROOT, GunicornServer

from .floor import machine

TOOL = ROOT / ".tools" / "perf_analyzer"
BINARY = TOOL / "bin" / "perf_analyzer"
WHEELS = {"tritonclient==2.50.0": "tritonclient-2.50.0.data/data/bin/perf_analyzer",
          "nvidia-cuda-runtime-cu12==12.9.79": "nvidia/cuda_runtime/lib/libcudart.so.12"}
RESULTS = Path(__file__).parent / "results"


def install() -> Path:
    """perf_analyzer and libcudart.so.12 from their wheels into .tools/perf_analyzer."""
    with tempfile.TemporaryDirectory() as folder:
        for requirement, member in WHEELS.items():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            "--platform", "manylinux2014_x86_64", "--dest", folder, requirement], check=True)
            name = requirement.split("==")[0].replace("-", "_")
            wheel = next(Path(folder).glob(f"{name}-*.whl"))
            target = TOOL / ("bin" if member.endswith("perf_analyzer") else "lib") / Path(member).name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                target.write_bytes(archive.read(member))
            target.chmod(0o755)
    return BINARY


def input_data(images: list[bytes]) -> dict:
    """perf_analyzer's --input-data for input `image`: each element already in the binary BYTES
    form (its 4-byte length, then the file), which perf_analyzer sends as it is."""
    return {"data": [{"image": {"b64": base64.b64encode(struct.pack("<I", len(i)) + i).decode()}}
                     for i in images]}


def profile(url: str, model: str, images: list[bytes], concurrency: list[int], window_ms: int = 3000,
            stability_percent: int = 10, protocol: str = "http") -> list[dict]:
    """perf_analyzer's figures at each concurrency: throughput and client-side latencies (ms).
    `url`: the server's HTTP URL, or host:port of its gRPC port with `protocol` "grpc"."""
    if not BINARY.is_file():
        raise SystemExit("error: perf_analyzer is not installed: make perf-analyzer")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        data, report = Path(folder) / "input.json", Path(folder) / "report.csv"
        data.write_text(json.dumps(input_data(images)))
        for clients in concurrency:
            command = [str(BINARY), "-m", model, "-u", url.removeprefix("http://"), "-i", protocol,
                       "--input-data", str(data), "--shape", "image:1", "--measurement-interval", str(window_ms),
                       "--stability-percentage", str(stability_percent), "--max-trials", "20",
                       "--concurrency-range", f"{clients}:{clients}", "-f", str(report)]
            run = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "LD_LIBRARY_PATH": str(TOOL / "lib")})
            if run.returncode != 0:
                raise RuntimeError(f"perf_analyzer failed ({run.returncode}): {(run.stdout + run.stderr)[-2000:]}")
            rows += [{"protocol": protocol, "concurrency": int(r["Concurrency"]), "captions_per_s": round(float(r["Inferences/Second"]), 2),
                      **{f"{p}_ms": round(int(r[f"{p} latency"]) / 1e3, 2) for p in ("p50", "p90", "p99")}}
                     for r in csv.DictReader(report.open())]
    return rows


def write(figures: dict) -> None:
    (RESULTS / "perf_analyzer.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / "perf_analyzer.md").write_text(markdown(figures))


def markdown(figures: dict) -> str:
    lines = ["# perf_analyzer against this server (Open Inference Protocol)", "",
             f"Machine: {figures['machine']}. Bundle `{figures['bundle']}`, one 640x480 JPEG per request, perf_analyzer "
             f"{figures['tool']} over HTTP and gRPC (one server, the protocols alternating by concurrency).", "",
             "| protocol | concurrency | captions/s | p50 ms | p90 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.get('protocol', 'http')} | {r['concurrency']} | {r['captions_per_s']} | {r['p50_ms']} | "
              f"{r['p90_ms']} | {r['p99_ms']} |" for r in figures["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install perf_analyzer into .tools and stop")
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    if args.install:
        print(f"installed {install()}")
        return 0
    from .peers import scene_photos

    model = load_bundle(args.bundle).name
    server = GunicornServer({"CAPTION_BUNDLE": str(args.bundle)})
    try:
        server.wait_ready(120)
        rows = []
        for clients in args.concurrency:  # alternating, so a drifting machine slows both alike
            # 5 s windows within 15 %: these machines' speed drifts too much for perf_analyzer's 10 % in 3 s.
            rows += profile(server.url, model, scene_photos(1), [clients], 5000, 15)
            rows += profile(f"127.0.0.1:{server.grpc_port}", model, scene_photos(1), [clients], 5000, 15,
                            protocol="grpc")
    finally:
        server.stop()
    write({"machine": machine(), "bundle": str(args.bundle), "tool": "from tritonclient 2.50.0", "rows": rows})
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
