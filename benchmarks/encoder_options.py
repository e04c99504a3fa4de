"""The fp32 encoder against its compute floor under each runtime option that might bring it nearer:
onnxruntime's graph optimisation level (`all` adds the NCHWc layout transform; `extended` and
`basic` do without it), its threads (all cores or one), spinning, the bundle's pre-optimised graph,
and OpenVINO in f32. One image, in rounds that alternate the variants with a fresh sgemm peak, so a
machine whose speed drifts slows them all alike. The server's settings are the `default` row.

Results are kept per processor (its model name and features), so runs on an AMD EPYC and an Intel
Xeon sit side by side in one file: what wins on one need not win on the other.

Usage: python -m benchmarks.encoder_options [--bundle onnx_models/demo] [--rounds 7]
Writes benchmarks/results/encoder_options.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.format import load_bundle
from bundle.preprocess import input_shape

from .floor import FULL, QUICK, Effort, encoder_flops, machine

RESULTS = Path(__file__).parent / "results"
RUNS_PER_ROUND = 5


@dataclass(frozen=True)
class Variant:
    """One way to run the fp32 encoder on onnxruntime (or OpenVINO f32)."""

    name: str
    level: str = "all"            # onnxruntime's graph optimisation level
    threads: int = 0              # 0: one per core, as the server
    spinning: bool = True
    optimized_file: bool = False  # the bundle's encoder.opt.onnx instead of encoder.onnx
    openvino: bool = False


VARIANTS = (Variant("default (level all: NCHWc, all cores, spinning)", optimized_file=True),
            Variant("level all, the unoptimised file"),
            Variant("no spinning", optimized_file=True, spinning=False),
            Variant("one thread", optimized_file=True, threads=1),
            Variant("level extended (no NCHWc layout)", level="extended"),
            Variant("level basic", level="basic"),
            Variant("OpenVINO f32", openvino=True))


def runner(variant: Variant, bundle):
    """A function running the encoder once on one image under `variant`; OpenVINOUnavailable without it."""
    image = np.random.default_rng(0).random((1, *input_shape(bundle.preprocessing)), dtype=np.float32)
    graph = bundle.manifest["graphs"]["encoder"]
    if variant.openvino:
        from server.openvino_encoder import OpenVINOEncoder

        encoder = OpenVINOEncoder(bundle.encoder_file("float32", optimized=False), graph["inputs"][0]["name"],
                                  graph["outputs"][0]["name"], "f32", 0, "")
        return lambda: encoder(image)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[variant.level]
    options.intra_op_num_threads = variant.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if variant.spinning else "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(bundle.encoder_file("float32", optimized=variant.optimized_file)), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: image})


def measure(bundle_dir: Path, rounds: int, effort: Effort = FULL) -> dict:
    """Each variant's best-of-RUNS_PER_ROUND milliseconds per round, the sgemm peak before each round,
    and the medians over the floor."""
    from server.openvino_encoder import OpenVINOUnavailable

    bundle = load_bundle(bundle_dir, verify_checksums=False)
    runners, missing = {}, {}
    for variant in VARIANTS:
        try:
            runners[variant.name] = runner(variant, bundle)
        except OpenVINOUnavailable as exc:
            missing[variant.name] = str(exc)
    for run in runners.values():
        for _ in range(3):
            run()
    peaks, times = [], {name: [] for name in runners}
    for _ in range(rounds):
        peaks.append(effort.sgemm_peak())
        for name, run in runners.items():
            best = float("inf")
            for _ in range(RUNS_PER_ROUND):
                started = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - started)
            times[name].append(round(best * 1e3, 2))
    flops = sum(encoder_flops(bundle_dir.resolve()).values())
    peak = statistics.median(peaks)
    floor_ms = flops / (peak * 1e9) * 1e3
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"machine": machine(effort), "processor": processor(), "bundle": str(bundle_dir), "rounds": rounds,
            "encoder_gflop": round(flops / 1e9, 3), "sgemm_peaks_gflops": [round(p) for p in peaks],
            "floor_ms": round(floor_ms, 2), "ms_per_round": times, "not_run": missing,
            "median_ms": {n: round(m, 2) for n, m in medians.items()},
            "over_floor": {n: round(m / floor_ms, 2) for n, m in medians.items()}}


def processor() -> str:
    """The processor's model name and the features that decide its kernels, which key the results
    (one entry per processor family)."""
    text = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown processor")
    flags = set(text.split())
    features = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(features) or 'no AVX-512'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a short sgemm: checks the script, not figures")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.bundle / "bundle.json").exists():
        parser.exit(2, f"error: no bundle at {args.bundle} (make demo builds one)\n")
    run = measure(args.bundle, args.rounds, QUICK if args.quick else FULL)
    file = args.results / "encoder_options.json"
    kept = json.loads(file.read_text()) if file.exists() else {"processors": {}}
    kept["processors"][run["processor"]] = run  # a run replaces only its own processor's figures
    file.write_text(json.dumps(kept, indent=2) + "\n")
    (args.results / "encoder_options.md").write_text(markdown(kept))
    print(markdown(kept))
    return 0


def markdown(results: dict) -> str:
    lines = ["# The fp32 encoder's runtime options, per processor", "",
             "One image, batch 1, the median of alternating rounds over the encoder's fp32 compute floor (its "
             "FLOPs over numpy's sgemm peak measured before each round). `default` is what the server runs.", ""]
    for name, run in results["processors"].items():
        peaks = run["sgemm_peaks_gflops"]
        lines += [f"## {name}", "",
                  f"Machine: {run['machine']}. {run['rounds']} rounds; sgemm {min(peaks)}-{max(peaks)} GFLOP/s, "
                  f"floor {run['floor_ms']} ms for {run['encoder_gflop']} GFLOP.", "",
                  "| variant | ms (median) | over the floor |", "| --- | --- | --- |"]
        lines += [f"| {v} | {run['median_ms'][v]} | {run['over_floor'][v]}x |" for v in run["median_ms"]]
        lines += [f"| {v} | not run: {why} | |" for v, why in run["not_run"].items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
