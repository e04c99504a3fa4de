"""Where a single-image request spends its time outside the encoder: the server (as `make serve`
starts it) against the bundle's own encoder graph in this process at batch 1, in alternating
chunks of one run, with the server's own stage timings and the same stages in this process.

The client sends a prebuilt multipart body over one keep-alive connection (http.client), so
what it costs itself stays small; it still shares the machine's cores with the server.

Usage: python -m benchmarks.request_path [--bundle onnx_models/demo] [--chunks 8] [--per-chunk 20]
Writes benchmarks/results/request_path.json and request_path.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

import numpy as np

from bundle.decoding import decode_greedy
from bundle.format import load_bundle
from harness.server_process import GunicornServer
from server.captioning import preprocess_uploads
from server.config import Config
from server.engine import CaptionEngine, EngineOptions

from .floor import machine
from .peers import scene_photos

RESULTS = Path(__file__).parent / "results"
BOUNDARY = "captionbenchmarkboundary"


def multipart(image: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def timed_ms(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def median(values) -> float:
    return round(float(np.median(values)), 2)


def measure(bundle: Path, image: bytes, chunks: int, per_chunk: int) -> dict:
    engine = CaptionEngine(load_bundle(bundle), EngineOptions())
    config = Config(bundle=bundle)
    inputs = preprocess_uploads([image], config, engine)[0]
    body = multipart(image)
    server = GunicornServer({"CAPTION_BUNDLE": str(bundle)})
    try:
        server.wait_ready()
        connection = http.client.HTTPConnection("127.0.0.1", server.port)

        def caption() -> dict:
            connection.request("POST", "/api/v1/captions", body,
                               {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"the server answered {response.status}: {answer}")
            return answer

        for _ in range(5):
            caption(), engine.encode(inputs)
        http_ms, encoder_ms, stages = [], [], []
        for _ in range(chunks):
            for _ in range(per_chunk):
                answer = {}
                http_ms.append(timed_ms(lambda: answer.update(caption())))
                stages.append(answer["timings_ms"])
            encoder_ms += [timed_ms(lambda: engine.encode(inputs)) for _ in range(per_chunk)]
    finally:
        server.stop()

    features = engine.encode(inputs)

    def decode():
        state = engine.decoder.initial_state(features)
        decode_greedy(engine.decoder.step, state, 1, engine.start_id, engine.end_id, engine.max_length,
                      engine.no_repeat_ngram_size)

    def decode_after_encode() -> list[float]:
        samples = []
        for _ in range(30):
            engine.encode(inputs)  # as in a request: the encoder has just pushed the decoder's weights out of cache
            samples.append(timed_ms(decode))
        return samples

    in_process = {"preprocess": median([timed_ms(lambda: preprocess_uploads([image], config, engine))
                                        for _ in range(100)]),
                  "decode_alone": median([timed_ms(decode) for _ in range(100)]),
                  "decode_after_encode": median(decode_after_encode())}
    server_stages = {name: median([s[name] for s in stages]) for name in stages[0]}
    http_p50, encoder_p50 = median(http_ms), median(encoder_ms)
    return {"image_bytes": len(image), "requests": len(http_ms), "http_p50_ms": http_p50,
            "encoder_in_process_p50_ms": encoder_p50, "outside_encoder_ms": round(http_p50 - encoder_p50, 2),
            "server_stages_ms": server_stages,
            "outside_the_app_ms": round(http_p50 - server_stages["total"], 2),
            "in_process_ms": in_process}


def markdown(results: dict) -> str:
    s, p = results["server_stages_ms"], results["in_process_ms"]
    return "\n".join([
        f"Machine: {results['machine']}. One 640x480 JPEG of two shapes ({results['image_bytes'] // 1000} KB), "
        f"greedy, one image per request, {results['requests']} requests over one keep-alive connection in chunks "
        "alternating with the encoder graph run in the benchmark's own process at batch 1.", "",
        "| | ms (p50) |", "| --- | --- |",
        f"| HTTP request, as the client sees it | {results['http_p50_ms']:.2f} |",
        f"| the bundle's encoder graph in-process, batch 1 | {results['encoder_in_process_p50_ms']:.2f} |",
        f"| **outside the encoder** (the difference) | **{results['outside_encoder_ms']:.2f}** |",
        f"| server: reading the upload, decoding and resizing it (`preprocess`) | {s['preprocess']:.2f} |",
        f"| server: waiting for the model (`queue`) | {s['queue']:.2f} |",
        f"| server: encoder (`encode`) | {s['encode']:.2f} |",
        f"| server: greedy decoding, init and every step (`decode`) | {s['decode']:.2f} |",
        f"| outside the app's own timing (HTTP parsing, sockets, the client) | {results['outside_the_app_ms']:.2f} |",
        f"| in-process: preprocessing the upload | {p['preprocess']:.2f} |",
        f"| in-process: greedy decoding, repeated alone (decoder weights in cache) | {p['decode_alone']:.2f} |",
        f"| in-process: greedy decoding right after an encoder run | {p['decode_after_encode']:.2f} |",
    ]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--per-chunk", type=int, default=20)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.bundle / "bundle.json").is_file():
        print(f"error: no bundle at {args.bundle} (run 'make demo')", file=sys.stderr)
        return 2
    results = {"machine": machine(), **measure(args.bundle, scene_photos(1)[0], args.chunks, args.per_chunk)}
    (args.results / "request_path.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "request_path.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
