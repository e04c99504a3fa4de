"""GPU serving: the encoder and whole captions, in fp32 and fp16, with each graph replayed as a
CUDA graph over fixed buffers or run plainly, and whether GPU captions equal the CPU's, on
onnxruntime's CUDA provider.

Usage: python -m benchmarks.gpu [--bundle onnx_models/demo] [--fp16 onnx_models/demo-fp16] [--run runs/demo]
Needs onnxruntime-gpu (exits 2 with one line without CUDA; `--provider cpu` runs the same steps on
the CPU, for tests). Writes benchmarks/results/gpu.json and gpu.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bundle.format import load_bundle
from bundle.preprocess import to_model_input
from server.bound_decoder import BoundDecoder
from server.engine import CaptionEngine, EngineOptions
from server.uploads import decode_image

from .latency import timed

RESULTS = Path(__file__).parent / "results"
ORT_PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def device_name(provider: str) -> str:
    if provider == "cpu":
        return f"CPU ({platform.machine()})"
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
        return "GPU " + query.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "GPU (nvidia-smi unavailable)"


def engine_for(bundle: Path, provider: str, io_binding: str) -> CaptionEngine:
    return CaptionEngine(load_bundle(bundle), EngineOptions(providers=(provider,), strict_providers=True,
                                                            io_binding=io_binding))


def run_mode(engine: CaptionEngine) -> str:
    if not isinstance(engine.decoder, BoundDecoder):
        return "plain run"
    return "CUDA graphs" if engine.decoder.cuda_graphs else "fixed buffers"


def gpu_memory_used_mib(provider: str) -> int | None:
    """The whole GPU's used memory (nvidia-smi), a rough view of what captured graphs keep."""
    if provider == "cpu":
        return None
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=20)
        return int(query.stdout.split()[0])
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return None


def captions(engine: CaptionEngine, images: np.ndarray) -> list[list[int]]:
    out = []
    for first in range(0, len(images), 16):
        out += [h[0].tokens for h in engine.caption(images[first:first + 16]).hypotheses]
    return out


def measure(bundles: dict[str, Path], images: np.ndarray, provider: str, runs: int, batches: tuple[int, ...]) -> dict:
    """Latency by precision, batch and run mode; caption agreement with fp32 on the CPU."""
    reference = captions(engine_for(bundles["fp32"], "cpu", "off"), images)
    results: dict = {"encoder": {}, "caption": {}, "agreement_with_cpu_fp32": {}, "gpu_memory_used_mib": {}}
    for precision, path in bundles.items():
        for io_binding in ("off", "on"):
            engine = engine_for(path, provider, io_binding)
            if engine.active_providers[0] != ORT_PROVIDER[provider]:
                raise RuntimeError(f"{path} runs on {engine.active_providers[0]}, not {ORT_PROVIDER[provider]}")
            key = f"{precision}, {run_mode(engine)}"
            for batch in batches:
                batch_images = np.resize(images, (batch, *images.shape[1:]))
                results["encoder"][f"{key}, batch {batch}"] = timed(lambda: engine.encode(batch_images), runs)
            one = images[:1]
            results["caption"][key] = {
                "greedy": timed(lambda: engine.caption(one, beam_size=1), runs),
                "beam3": timed(lambda: engine.caption(one, beam_size=3), runs),
                "greedy_batch8": timed(lambda: engine.caption(images[:8], beam_size=1), max(min(10, runs), runs // 4)),
            }
            got = captions(engine, images)
            same = sum(a == b for a, b in zip(got, reference))
            results["agreement_with_cpu_fp32"][key] = f"{same}/{len(images)}"
            results["gpu_memory_used_mib"][key] = gpu_memory_used_mib(provider)
            print(f"{key}: greedy p50 {results['caption'][key]['greedy']['p50']} ms, "
                  f"captions equal to CPU fp32 {same}/{len(images)}", flush=True)
    return results


def write_results(results: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu.json").write_text(json.dumps(results, indent=2))
    (folder / "gpu.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    """gpu.md from gpu.json."""
    lines = ["# GPU serving", "",
             f"Device: {results['device']}; onnxruntime {results['onnxruntime']} on {results['provider']}. "
             f"{results['images']} held-out images. Written by `python -m benchmarks.gpu`.", "",
             "| encoder | p50 ms | p95 ms | p99 ms |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {t['p50']} | {t['p95']} | {t['p99']} |" for name, t in results["encoder"].items()]
    lines += ["", "| whole caption (1 image unless said) | greedy p50 ms | beam 3 p50 ms | greedy, 8 images p50 ms "
              "| greedy captions equal to CPU fp32 | GPU memory used after, MiB |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {t['greedy']['p50']} | {t['beam3']['p50']} | {t['greedy_batch8']['p50']} | "
              f"{results['agreement_with_cpu_fp32'][name]} | {results['gpu_memory_used_mib'][name]} |"
              for name, t in results["caption"].items()]
    lines += ["", "CUDA graphs capture batches of up to 8 images in the encoder; batch 32 runs plainly in both modes. "
              "GPU memory is the whole card's, read by nvidia-smi after each configuration: a rough figure."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"), help="the fp32 bundle")
    parser.add_argument("--fp16", type=Path, default=Path("onnx_models/demo-fp16"),
                        help="its fp16 variant (python -m export.fp16)")
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="training run with held-out images")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batches", default="1,8,32", help="encoder batch sizes, comma-separated")
    parser.add_argument("--provider", choices=sorted(ORT_PROVIDER), default="cuda")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for gpu.json and gpu.md")
    args = parser.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        parser.error(f"--batches: positive integers separated by commas, got {args.batches!r}")
    if ORT_PROVIDER[args.provider] not in ort.get_available_providers():
        print(f"error: this onnxruntime has no {ORT_PROVIDER[args.provider]} (install onnxruntime-gpu; see docs/performance.md)",
              file=sys.stderr)
        return 2
    needed = [args.bundle / "bundle.json", args.fp16 / "bundle.json", args.run / "heldout.json"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        print(f"error: missing {', '.join(missing)} (make demo; python -m export.fp16)", file=sys.stderr)
        return 2
    heldout = json.loads((args.run / "heldout.json").read_text())[:args.images]
    preprocessing = load_bundle(args.bundle, verify_checksums=False).manifest["preprocessing"]
    images = np.stack([to_model_input(decode_image(Path(h["image"]).read_bytes(), 10**8, preprocessing), preprocessing)
                       for h in heldout])
    results = {"device": device_name(args.provider), "provider": ORT_PROVIDER[args.provider],
               "onnxruntime": ort.__version__, "images": len(images),
               **measure({"fp32": args.bundle, "fp16": args.fp16}, images, args.provider, args.runs, batches)}
    write_results(results, args.results)
    print((args.results / "gpu.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
