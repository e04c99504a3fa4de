"""Component latency: preprocessing, encoder, one decoder step and whole captions, for Keras
as the seed project ran it (`model.predict` per step), Keras at its best (`tf.function`) and
onnxruntime (fp32, and int8 where the bundle's int8 variant exists) and, where this processor
has bf16, the encoder on OpenVINO (the fp32 bundle in bf16, the int8 variant), each also as a
multiple of the encoder's compute floor.

Usage: python -m benchmarks.latency [--bundle onnx_models/demo] [--int8 onnx_models/demo-int8] [--run runs/demo]
       [--runs 50]
Writes benchmarks/results/latency.json and latency.md.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bundle.format import load_bundle
from bundle.preprocess import to_model_input
from server.engine import CaptionEngine, EngineOptions
from server.uploads import decode_image

from .floor import FULL, QUICK, encoder_floor, machine
from .http import openvino_bf16_available

RESULTS = Path(__file__).parent / "results"


def timed(fn, runs: int, warmup: int = 3) -> dict:
    """p50/p95/p99 in ms of `fn()` over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return {f"p{q}": round(float(np.percentile(samples, q)), 2) for q in (50, 95, 99)} | {"runs": runs}


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = (rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def onnx_latencies(engine: CaptionEngine, image: np.ndarray, runs: int, decoder: bool = True) -> dict:
    """The encoder, one decoder step (unless `decoder` is off: variants share the fp32 decoder) and whole captions."""
    features = engine.encode(image)
    state = engine.decoder.initial_state(features)
    token = np.full((1, 1), engine.start_id, np.int32)
    return {
        "encoder": timed(lambda: engine.encode(image), runs),
        **({"decoder_step": timed(lambda: engine.decoder.step(token, state), runs * 4)} if decoder else {}),
        "caption_greedy": timed(lambda: engine.caption(image, beam_size=1), runs),
        "caption_beam3": timed(lambda: engine.caption(image, beam_size=3), runs),
    }


def keras_latencies(run_dir: Path, image: np.ndarray, special: dict, max_length: int, runs: int) -> dict:
    """Keras greedy captions: `predict` on every call (the seed project) and `tf.function`."""
    import keras
    import tensorflow as tf

    encoder = keras.models.load_model(run_dir / "encoder.keras", compile=False)
    init = keras.models.load_model(run_dir / "decoder_init.keras", compile=False)
    step = keras.models.load_model(run_dir / "decoder_step.keras", compile=False)
    start = np.full((1, 1), special["start"], np.int32)

    # The decoder-state rule of bundle.specs: the step returns log_probs and the states it updates
    # (h, c), which come first (then, attending, its attention weights); the rest (context, and
    # memory for attention) are carried.
    def caption_predict():
        state = list(init.predict(encoder.predict(image, verbose=0), verbose=0))
        token = start
        for _ in range(max_length):
            log_probs, *updated = step.predict([token, *state], verbose=0)[:3]
            state[:len(updated)] = updated
            token = log_probs.argmax(-1).astype(np.int32)[:, None]
            if token[0, 0] == special["end"]:
                break

    encode_fn = tf.function(lambda x: encoder(x, training=False))
    init_fn = tf.function(lambda f: init(f, training=False))
    step_fn = tf.function(lambda t, *state: step([t, *state], training=False))

    def caption_function():
        state = list(init_fn(encode_fn(image)))
        token = tf.constant(start)
        for _ in range(max_length):
            log_probs, *updated = step_fn(token, *state)[:3]
            state[:len(updated)] = updated
            token = tf.cast(tf.argmax(log_probs, -1), tf.int32)[:, None]
            if int(token[0, 0]) == special["end"]:
                break

    return {
        "keras_predict": {"encoder": timed(lambda: encoder.predict(image, verbose=0), runs // 2),
                          "caption_greedy": timed(caption_predict, runs // 2)},
        "keras_tf_function": {"encoder": timed(lambda: encode_fn(image), runs),
                              "caption_greedy": timed(caption_function, runs)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--int8", type=Path, default=Path("onnx_models/demo-int8"),
                        help="the bundle's int8 variant (python -m export.int8); measured when it exists")
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="the training run the bundle came from")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for latency.json and latency.md")
    parser.add_argument("--quick", action="store_true", help="every step with quick peaks (to check that it runs)")
    args = parser.parse_args(argv)
    effort = QUICK if args.quick else FULL
    bundle = load_bundle(args.bundle)
    engine = CaptionEngine(bundle)
    small, large = jpeg(640, 480), jpeg(4000, 3000)
    preprocess = lambda data: to_model_input(decode_image(data, 40_000_000, engine.preprocessing),  # noqa: E731
                                             engine.preprocessing)
    image = preprocess(small)[None]
    results = {
        "machine": machine(effort),
        "floor": encoder_floor(args.bundle, effort=effort),
        "preprocess": {"jpeg_640x480": timed(lambda: preprocess(small), args.runs),
                       "jpeg_12mp": timed(lambda: preprocess(large), max(min(10, args.runs), args.runs // 5))},
        "onnxruntime_fp32": onnx_latencies(engine, image, args.runs),
    }
    on_openvino = EngineOptions(providers=("openvino", "cpu"), strict_providers=True)
    bf16_here = openvino_bf16_available()
    if bf16_here:
        results["openvino_bf16"] = onnx_latencies(CaptionEngine(bundle, on_openvino), image, args.runs, decoder=False)
    if (args.int8 / "bundle.json").is_file():
        int8 = load_bundle(args.int8)
        results["onnxruntime_int8"] = onnx_latencies(CaptionEngine(int8), image, args.runs,
                                                     decoder=False)
        results["int8_check"] = int8.variant_check()
        if bf16_here:
            results["openvino_int8"] = onnx_latencies(CaptionEngine(int8, on_openvino), image, args.runs, decoder=False)
    if (args.run / "encoder.keras").is_file():
        results.update(keras_latencies(args.run, image, bundle.manifest["special_tokens"], engine.max_length,
                                       args.runs))
    write_results(results, args.results)
    print((args.results / "latency.md").read_text())
    return 0


def write_results(results: dict, folder: Path = RESULTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latency.json").write_text(json.dumps(results, indent=2))
    (folder / "latency.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    """latency.md from latency.json."""
    floor = results["floor"]["floor_ms"]
    lines = ["# Component latency", "",
             f"Machine: {results['machine']}. Encoder: {results['floor']['encoder_gflop']} GFLOP; sgemm peak "
             f"{results['floor']['sgemm_peak_gflops']} GFLOP/s; floor {floor} ms. Batch 1, one process. "
             "Written by `python -m benchmarks.latency`.", "",
             "| what | p50 ms | p95 ms | p99 ms | p50 / floor |", "| --- | --- | --- | --- | --- |"]
    for group in ("preprocess", "onnxruntime_fp32", "onnxruntime_int8", "openvino_bf16", "openvino_int8",
                  "keras_tf_function", "keras_predict"):
        for name, t in results.get(group, {}).items():
            lines.append(f"| {group} {name} | {t['p50']} | {t['p95']} | {t['p99']} | {t['p50'] / floor:.2f} |")
    if "keras_predict" in results:
        ort = results["onnxruntime_fp32"]["caption_greedy"]["p50"]
        lines += ["", f"Whole greedy caption, onnxruntime vs Keras: "
                      f"{results['keras_predict']['caption_greedy']['p50'] / ort:.1f}x faster than `predict` per step, "
                      f"{results['keras_tf_function']['caption_greedy']['p50'] / ort:.2f}x faster than `tf.function`."]
    if "onnxruntime_int8" in results:
        int8, fp32, check = results["onnxruntime_int8"], results["onnxruntime_fp32"], results["int8_check"]
        lines += ["", f"int8 encoder: {fp32['encoder']['p50'] / int8['encoder']['p50']:.2f}x faster than fp32; "
                      f"its greedy captions equal fp32's on {check['greedy_captions_identical']} held-out images "
                      f"(mean feature error {check['mean_abs_feature_diff'] / check['feature_spread']:.1%} of the "
                      "features' spread across images)."]
    if "openvino_bf16" in results:
        fp32 = results["onnxruntime_fp32"]["encoder"]["p50"]
        faster = [f"{what}: {fp32 / results[group]['encoder']['p50']:.2f}x" for group, what in
                  (("openvino_bf16", "the fp32 bundle in bf16"), ("openvino_int8", "the int8 variant")) if group in results]
        lines += ["", "Encoder on OpenVINO against onnxruntime fp32: " + "; ".join(faster) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
